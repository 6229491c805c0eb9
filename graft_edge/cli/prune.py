"""`prune`: shrink a checkpoint to a parameter budget (structured, unstructured or 2:4), resumably."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from graft_edge.cli.common import console, err_console, guarded, write_json_output
from graft_edge.errors import GraftError


def partial_path(out: Path) -> Path:
    """Where an unfinished run keeps its last finished step: OUT.partial beside OUT."""
    return out.with_name(out.name + ".partial")


def _check_options(method: str, target: Optional[str], steps: Optional[int], data: Optional[Path],
                   finetune_epochs: int, round_to: int, attn_unit: str, fraction: float, device: str) -> str:
    from graft_edge.compress import ATTN_UNITS

    if target is None and method != "2:4":
        raise GraftError(f"--target is required for {method} pruning (e.g. --target 60M or --target 60%)")
    if steps is not None and steps < 1:
        raise GraftError(f"--steps {steps}: expected a positive integer")
    if finetune_epochs < 0:
        raise GraftError(f"--finetune-epochs {finetune_epochs}: expected 0 or more")
    if finetune_epochs > 0 and data is None:
        raise GraftError("--finetune-epochs needs --data ROOT (the dataset to finetune on)")
    if data is not None and not data.is_dir():
        raise GraftError(f"--data {data} is not a directory")
    if round_to < 1:
        raise GraftError(f"--round-to {round_to}: expected a positive integer")
    if not 0 < fraction < 1:
        raise GraftError(f"--fraction {fraction}: expected a number in (0, 1)")
    unit = attn_unit.replace("-", "_")
    if unit not in ATTN_UNITS:
        raise GraftError(f"--attn-unit {attn_unit!r}: expected heads or head-dims")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise GraftError(f"--device {device}: no CUDA GPU is available to PyTorch here")
    return unit


@guarded
def prune_cmd(
    model: Path = typer.Argument(..., help="Checkpoint (.pt) to prune (dense, or pruned before by the same method)."),
    target: Optional[str] = typer.Option(
        None, "--target",
        help="Size of the deployed embedding model (classifier excluded): 60M, 60000000, 1.5B, 500K, or 60% of the "
             "current size. structured counts parameters, unstructured nonzeros; 2:4 implies its size (a target is "
             "then an upper bound)."),
    out: Path = typer.Option(..., "--out", help="Pruned checkpoint to write (atomically, when every step is done)."),
    method: str = typer.Option("structured", "--method", help="structured (Torch-Pruning: heads + MLP channels; really "
                               "smaller and faster) | unstructured (paper: global L1 on backbone weights) | 2:4."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Prune(+finetune) steps from the current size to the "
                                        "target. Default with --finetune-epochs: ~20% of the remaining size per step "
                                        "(unstructured: of the remaining prunable weights, as in the paper); without: 1."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root: finetune between steps (with "
                                        "--finetune-epochs) and record mAP/R1 per step."),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Stage-2 finetuning epochs after every step "
                                        "(needs --data)."),
    round_to: int = typer.Option(8, "--round-to", help="structured: channel widths are multiples of this."),
    attn_unit: str = typer.Option("heads", "--attn-unit", help="structured: prune whole heads, or head-dims."),
    fraction: float = typer.Option(0.2, "--fraction", help="Share of what remains removed per default step."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.partial."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (finetuning)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON to this file ('-' "
                                            "for stdout)."),
) -> None:
    """Prune a model to a parameter budget, optionally finetuning between steps; resumable with --resume."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from graft_edge.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
    from graft_edge.compress import (
        arch_summary, check_compatible, counted_size, normalize_method, plan_prune, prune_to_target, resolve_target,
    )
    from graft_edge.fileio import sha256_file
    from graft_edge.model import embedding_params
    from graft_edge.units import format_count

    method = normalize_method(method)
    unit = _check_options(method, target, steps, data, finetune_epochs, round_to, attn_unit, fraction, device)
    source_sha = sha256_file(model) if model.is_file() else None
    net, ckpt = load_model(model)
    check_compatible(method, ckpt.history, ckpt.arch, name=str(model))
    start_size = counted_size(net, method)
    target_n = resolve_target(target, net, method) if target is not None else None
    if steps is None and not finetune_epochs:
        steps = 1  # without retraining, magnitude rankings do not change between steps: one cut is the same
    schedule = plan_prune(net, target_n, method, steps, round_to, unit, fraction)  # validates: nothing written yet
    history, done = list(ckpt.history), 0
    run_state: dict[str, Any] = {
        "source": str(model), "source_sha256": source_sha, "method": method, "target": target_n,
        "schedule": [int(t) for t in schedule], "round_to": int(round_to), "attn_unit": unit,
        "fraction": float(fraction), "finetune_epochs": int(finetune_epochs), "data": str(data) if data else None,
        "start_size": int(start_size), "done": 0,
    }

    partial = partial_path(out)
    if resume and partial.is_file():
        pckpt = read_checkpoint(partial)
        state = dict(pckpt.extra.get("prune_run") or {})
        keys = ("source_sha256", "method", "target", "schedule", "round_to", "attn_unit")
        if any(state.get(k) != run_state[k] for k in keys):
            differ = next(k for k in keys if state.get(k) != run_state[k])
            raise GraftError(f"{partial} belongs to a different prune run ({differ} differs); delete it or drop --resume")
        net, history, done = model_from_checkpoint(pckpt, partial), list(pckpt.history), int(state["done"])
        run_state = state
        err_console().print(f"resuming from {partial}: {done}/{len(schedule)} steps done")
    elif resume:
        err_console().print(f"no unfinished run at {partial}: starting from step 1")
    elif partial.is_file():
        err_console().print(f"note: {partial} is from an earlier run; starting over (pass --resume to continue it)")
    net.to(device)

    cfg = ckpt.config
    finetune_fn = None
    if data is not None:
        def finetune_fn(m: Any, after_step: Any) -> Any:
            if finetune_epochs > 0:
                from graft_edge.train import finetune

                return finetune(m, cfg, data, finetune_epochs, after_step=after_step)
            from graft_edge.evaluation import evaluate_embedder
            from graft_edge.runtime.torch_backend import TorchEmbedder

            m.eval()
            return evaluate_embedder(TorchEmbedder.from_model(m), data, batch_size=cfg.data.eval_batch_size)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console(), transient=True) as bar:
        task = bar.add_task(f"{method} pruning to {format_count(schedule[-1])}", total=len(schedule), completed=done)

        def on_step(m: Any, entry: dict[str, Any]) -> None:
            bar.advance(task)
            if entry["step"] < entry["steps"]:
                from graft_edge.compress import extract_arch

                run_state["done"] = int(entry["step"])
                save_checkpoint(partial, m, cfg, arch=extract_arch(m) if method == "structured" else ckpt.arch,
                                history=history + [entry], meta={"pruned_from": str(model)},
                                extra={"prune_run": dict(run_state)})
            history.append(entry)

        prior = list(history)
        net, arch, new_history = prune_to_target(
            net, cfg, target_n, method, steps, round_to, finetune_fn, on_step,
            attn_unit=unit, fraction=fraction, history=prior, schedule=schedule, done=done,
        )
    arch = arch if arch is not None else ckpt.arch
    net.cpu()
    save_checkpoint(out, net, cfg, arch=arch, history=new_history, meta={"pruned_from": str(model)})
    if partial.is_file():
        partial.unlink()

    final_params, final_nz = embedding_params(net), embedding_params(net, nonzero=True)
    final = final_params if method == "structured" else final_nz
    what = "parameters" if method == "structured" else "nonzero parameters"
    lines = [f"wrote {out}: {method} pruning, {format_count(run_state['start_size'])} -> {format_count(final)} {what} "
             f"({100 * final / run_state['start_size']:.1f}%) in {len(schedule)} step(s)"
             + (f"; target {format_count(target_n)}" if target_n is not None else "")]
    if method == "structured":
        lines.append(f"  widths: {arch_summary(arch)}")
    for e in new_history[len(new_history) - (len(schedule) - done):]:
        metr = "".join(f"  {k} {100 * e[k]:.2f}" for k in ("mAP", "R1") if k in e)
        lines.append(f"  step {e['step']}/{e['steps']}: params {format_count(e['params_embedding'])}, nonzero "
                     f"{format_count(e['params_nonzero'])}{metr}")
    console().print("\n".join(lines))
    write_json_output(json_out, {"out": str(out), "method": method, "target": target_n, "params_embedding": final_params,
                                 "params_nonzero": final_nz, "start_size": run_state["start_size"], "arch": arch,
                                 "history": new_history})
