"""`graft-edge frontier`: prune to several sizes, export, evaluate the artefacts, time them, report."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from graft_edge.cli.common import DTYPE_HELP, console, err_console, guarded, modalities_option
from graft_edge.compress import get_method, parse_targets
from graft_edge.formats import DEFAULT_FRONTIER_FORMATS, help_text, parse_formats
from graft_edge.profile.progress import rich_progress
from graft_edge.units import format_count
from graft_edge.workflows.frontier import FrontierSettings, run_frontier

FORMAT_HELP = help_text()
D = FrontierSettings(targets=())  # the defaults shown and used by the options below


def frontier_table(rows: list[dict[str, Any]], title: str = "GraFT frontier", width: int = 120) -> Any:
    """The frontier as a rich table (the paper's Tables 3-4 columns (test split), validation mAP when measured, plus
    format, size, latency, speed-up).

    Below 100 columns of `width`, size and R5 are left out (frontier.md and .csv have everything).
    """
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    wide = width >= 100
    batch = next((r["batch"] for r in rows if r.get("batch")), None)
    t = Table(title=title + (f" - latency per sample at batch {batch}" if batch else ""), box=box.SIMPLE_HEAD,
              pad_edge=False)
    t.add_column("Variant", no_wrap=True)
    t.add_column("Params", justify="right", no_wrap=True)
    t.add_column("Format", overflow="fold", min_width=6)
    val = any(r.get("val_mAP") is not None for r in rows)
    worst = any(r.get("worst_mAP") is not None for r in rows)
    cols = ((["MB"] if wide else []) + ["mAP", "R1"] + (["R5"] if wide else []) + ["R10"] + (["val mAP"] if val else [])
            + (["worst subset"] if worst else []) + ["ms", "Speed-up"])
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)

    def pct(v: Any, std: Any = None) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.1f}" if std is None else f"{100 * v:.1f}±{100 * std:.1f}"

    for r in rows:
        fmt = r["format"] if r["status"] == "ok" else f"{r['format']} [red]{escape(r['status'][:40])}[/]"
        vals = {"MB": f"{r['size_bytes'] / 1e6:.2f}" if r.get("size_bytes") else "-",
                "mAP": pct(r.get("mAP"), r.get("mAP_std")), "R1": pct(r.get("R1"), r.get("R1_std")), "R5": pct(r.get("R5")), "R10": pct(r.get("R10")),
                "val mAP": pct(r.get("val_mAP"), r.get("val_mAP_std")),
                "worst subset": f"{pct(r.get('worst_mAP'), r.get('worst_mAP_std'))} {r.get('worst_subset') or ''}".strip(),
                "ms": f"{r['latency_ms']:.3f}" if r.get("latency_ms") else "-",
                "Speed-up": f"{r['speedup']:.2f}x" if r.get("speedup") else "-"}
        name = escape(str(r["variant"]))
        t.add_row(f"[bold]{name}[/]" if r.get("pareto") else name,
                  format_count(r["params"]) if r.get("params") is not None else "-", fmt, *[vals[c] for c in cols])
    return t


@guarded
def frontier_cmd(
    model: Path = typer.Argument(..., help="Dense (or already pruned) checkpoint (.pt) to start from."),
    targets: str = typer.Option(..., "--targets", help="Comma-separated sizes, each pruned from the previous: fractions of MODEL's embedding parameters (80%,70%,60%,45%) or counts (76M,70M,60M,46M)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root: train split for finetuning and INT8 calibration, query/gallery for mAP. Without it the frontier is latency only (no finetuning, no int8-static / trt-int8)."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: finished variants and formats are reused)."),
    formats: str = typer.Option(",".join(DEFAULT_FRONTIER_FORMATS), "--formats", help=f"Comma-separated formats ({FORMAT_HELP}; trt = trt-fp16)."),
    finetune_epochs: Optional[int] = typer.Option(None, "--finetune-epochs", help="Finetuning epochs after every pruning step (0: none). Default: 1 with --data, 0 without.", min=0),
    method: str = typer.Option(D.method, "--method", help="Pruning method: structured (real speed-ups), unstructured (paper), 2:4."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Prune+finetune steps per target (default: about 20% of the remaining size per step).", min=1),
    batch: int = typer.Option(D.batch, "--batch", help="Batch size for latency; per-sample ms (= batch ms / batch) is reported.", min=1),
    warmup: int = typer.Option(D.warmup, "--warmup", help="Untimed warm-up calls per artefact.", min=0),
    iters: int = typer.Option(D.iters, "--iters", help="Timed calls per artefact, spread over --rounds interleaved rounds.", min=1),
    rounds: int = typer.Option(D.rounds, "--rounds", help="Interleaved timing rounds (every artefact is timed in every round).", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for PyTorch / ONNX Runtime (default: all cores).", min=1),
    device: str = typer.Option(D.device, "--device", help="cpu or cuda[:N] for evaluation and timing."),
    peaks: bool = typer.Option(True, "--peaks/--no-peaks", help="Report each row's share of this CPU's shape-true GEMM peak of its precision (the artefact's own GEMM shapes at --batch, timed on torch, ONNX Runtime and OpenVINO): measured on first use (seconds; a progress line says so) and cached per CPU, --threads and runtime versions in ~/.cache/graft-edge/ ($GRAFT_EDGE_CACHE moves it). --no-peaks uses cached peaks only."),
    dtype: str = typer.Option(D.dtype, "--dtype", help=f"Precision the PyTorch checkpoints (the torch format) are evaluated and timed at: {DTYPE_HELP}. Exported formats run at their own precision (openvino-bf16 for a bf16 artefact)."),
    eval_batch_size: int = typer.Option(D.eval_batch_size, "--eval-batch-size", help="Images per forward pass when measuring mAP.", min=1),
    rerank: bool = typer.Option(False, "--rerank", help="Also report k-reciprocal re-ranked mAP/R1 of every artefact (mAP_rerank, R1_rerank in the CSV/JSON; k1=20, k2=6, lambda=0.3)."),
    seeds: int = typer.Option(D.seeds, "--seeds", help="Repeat every target's prune + finetune + evaluation with this many finetuning seeds; mAP/R1 are reported as mean ± sample std (n in the CSV/JSON), the plot shows error bars. Needs finetuning.", min=1),
    margin: float = typer.Option(100 * D.margin, "--margin", help="mAP points within which a variant counts as "
                                 "equivalent to dense: its difference's whole 95% interval (paired over seeds) must lie "
                                 "inside ±margin. Only the verdicts, the front and the words depend on it.", min=0.0,
                                 max=99.0),
    distill: Optional[bool] = typer.Option(None, "--distill/--no-distill", help="Finetune every pruning step with knowledge distillation from the dense model (embedding + logits terms, weights 1, T=4). Default: on for structured pruning with finetuning."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard the state in OUT and start again."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated subset of the model's modalities (e.g. rgb,nir) to evaluate and time every artefact on, as if the other sensors were missing. Default: all."),
    robustness: bool = typer.Option(False, "--robustness", help="Also evaluate every artefact on every non-empty subset of its sensors: the worst subset's mAP and which subset (worst_mAP, worst_subset in the CSV/JSON; the JSON state keeps every subset's numbers). Artefacts without a presence-mask input say so."),
) -> None:
    """Prune MODEL to each target (each from the previous), finetune, export every variant to the requested formats,
    measure mAP on the exported artefacts and time them side by side; write frontier.csv/.json/.md/.png to OUT."""
    if finetune_epochs is None:
        finetune_epochs = D.finetune_epochs if data is not None else 0  # without data there is nothing to finetune on
    settings = FrontierSettings(targets=parse_targets(targets), formats=parse_formats(formats), method=get_method(method),
                               finetune_epochs=finetune_epochs, steps=steps, batch=batch, warmup=warmup, iters=iters,
                               rounds=rounds, threads=threads, device=device.strip().lower(), dtype=dtype, peaks=peaks,
                               eval_batch_size=eval_batch_size, rerank=rerank, distill=distill, seeds=seeds, margin=margin / 100,
                               robustness=robustness,
                               modalities=modalities_option(modalities))
    err = err_console()
    with rich_progress(err) as hook:
        result = run_frontier(model, data, out, settings, overwrite=overwrite, progress=hook,
                              log=lambda msg: err.print(msg, soft_wrap=True, emoji=False, markup=False))
    con = console()
    con.print(frontier_table(result.rows, width=con.width))
    if result.speedup_note:
        con.print(result.speedup_note, soft_wrap=True)
    if result.verdict_note:
        con.print(result.verdict_note, soft_wrap=True)
    if result.skipped:
        con.print(f"reused from {out}: {len(result.skipped)} finished piece(s)")
    con.print("wrote " + ", ".join(str(p) for p in result.files.values()), soft_wrap=True)
    failed = [r for r in result.rows if r["status"] != "ok"]
    if failed:
        for r in failed:
            err.print(f"[bold red]error:[/] {r['variant']} {r['format']}: {r['status'][7:]}", soft_wrap=True, emoji=False)
        raise typer.Exit(1)
