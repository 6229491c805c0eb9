"""`prune`: shrink a checkpoint to a parameter budget (structured, unstructured or 2:4), resumably."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from graft_edge.cli.common import check_output_file, console, err_console, guarded, write_json_output
from graft_edge.compress import get_method
from graft_edge.evaluation import score_line
from graft_edge.model import embedding_params
from graft_edge.model.arch import arch_summary
from graft_edge.train.distill import DistillConfig
from graft_edge.units import format_count
from graft_edge.workflows.prune import PruneRequest, run_prune


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
                                        "--finetune-epochs; each keeps its epoch with the best validation mAP) and "
                                        "record validation (val_mAP, val_R1, ...) and test (mAP, R1, ...) per step."),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Stage-2 finetuning epochs after every step "
                                        "(needs --data)."),
    round_to: int = typer.Option(8, "--round-to", help="structured: channel widths are multiples of this."),
    attn_unit: str = typer.Option("heads", "--attn-unit", help="structured: prune whole heads, or head-dims."),
    fraction: float = typer.Option(0.2, "--fraction", help="Share of what remains removed per default step."),
    distill: Optional[bool] = typer.Option(
        None, "--distill/--no-distill", help="Finetune with knowledge distillation from a teacher (--distill-teacher) "
        "(embedding + logits terms; the teacher is never saved). Default: on for structured pruning with "
        "--finetune-epochs, off otherwise."),
    distill_embed_weight: float = typer.Option(1.0, "--distill-embed-weight", help="Weight of the embedding "
                                               "distillation term (on L2-normalised embeddings)."),
    distill_logits_weight: float = typer.Option(1.0, "--distill-logits-weight", help="Weight of the logits term "
                                                "KL(teacher || student) at temperature T, scaled by T^2."),
    distill_temperature: float = typer.Option(4.0, "--distill-temperature", help="Softmax temperature T of the "
                                              "logits term (unitless, > 0)."),
    distill_embed_loss: str = typer.Option("cosine", "--distill-embed-loss", help="Embedding term: cosine "
                                           "(1 - cos) or mse (squared distance of the L2-normalised embeddings)."),
    distill_teacher: str = typer.Option(DistillConfig().teacher, "--distill-teacher", help="Teacher: source (the "
                                        "input checkpoint, for every step) or previous (the model before each cut)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.partial."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (finetuning)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON to this file ('-' "
                                            "for stdout)."),
) -> None:
    """Prune a model to a parameter budget, optionally finetuning between steps; resumable with --resume."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    check_output_file(out, "--out")
    check_output_file(json_out, "--json")
    request = PruneRequest(target=target, method=get_method(method), steps=steps, round_to=round_to, attn_unit=attn_unit,
                           fraction=fraction, data=data, finetune_epochs=finetune_epochs, device=device,
                           distill=distill, distill_config=DistillConfig(
                               embed_weight=distill_embed_weight, logits_weight=distill_logits_weight,
                               temperature=distill_temperature, embed_loss=distill_embed_loss,
                               teacher=distill_teacher))
    err = err_console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(f"{request.method.name} pruning", total=None)
        res = run_prune(model, out, request, resume=resume,
                        progress=lambda done, total: bar.update(task, completed=done, total=total),
                        log=lambda msg: err.print(msg, soft_wrap=True, markup=False, emoji=False))
    method = res.method
    final_params, final_nz = embedding_params(res.model), embedding_params(res.model, nonzero=True)
    final = method.counted_size(res.model)
    lines = [f"wrote {out}: {method.name} pruning, {format_count(res.start_size)} -> {format_count(final)} {method.counts} "
             f"({100 * final / res.start_size:.1f}%) in {len(res.schedule)} step(s)"
             + (" with distillation" if request.distilling else "")
             + (f"; target {format_count(res.target)}" if res.target is not None else "")]
    if not method.keeps_architecture:
        lines.append(f"  widths: {arch_summary(res.arch)}")
    for e in res.new_steps:
        scores = score_line(e, ("mAP", "R1"))
        kept = f" (finetuning epoch {e['best_epoch']} kept: best val mAP)" if e.get("best_epoch") else ""
        lines.append(f"  step {e['step']}/{e['steps']}: params {format_count(e['params_embedding'])}, nonzero "
                     f"{format_count(e['params_nonzero'])}" + (f"  {scores}{kept}" if scores else ""))
    console().print("\n".join(lines))
    write_json_output(json_out, {"out": str(out), "method": method.name, "target": res.target,
                                 "params_embedding": final_params, "params_nonzero": final_nz,
                                 "start_size": res.start_size, "arch": res.arch, "history": res.history})
