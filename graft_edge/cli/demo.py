"""`graft-edge demo`: the whole pipeline on the built-in synthetic set, on a CPU, in minutes."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer

from graft_edge.cli.common import console, err_console, guarded
from graft_edge.cli.frontier import frontier_table
from graft_edge.compress import parse_targets
from graft_edge.formats import parse_formats
from graft_edge.profile.progress import rich_progress
from graft_edge.verdicts import DEFAULT_MARGIN
from graft_edge.workflows.demo import DemoSettings, auto_threads, run_demo, with_overrides


@guarded
def demo_cmd(
    out: Path = typer.Option(Path("graft-edge-demo"), "--out", help="Folder for the data, the training run and the frontier (rerunning resumes)."),
    fast: bool = typer.Option(False, "--fast", help="Smoke-test size: 20 ids (8 train after the validation split), 4 training steps per stage, one target (45%), batch 16: the whole pipeline in about a minute; the numbers mean nothing."),
    targets: Optional[str] = typer.Option(None, "--targets", help="Frontier sizes as fractions of the trained model (default 70%,45%; --fast: 45%)."),
    formats: Optional[str] = typer.Option(None, "--formats", help="Frontier formats (default torch,onnx,int8, plus "
                                          "openvino-int8 where OpenVINO + NNCF are installed and openvino-bf16 where "
                                          "the CPU also has AVX512-BF16 or AMX)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Finetuning seeds per frontier target: mAP as mean ± "
                                        "std, error bars in the plot (default 3; --fast: 1). More seeds extend a "
                                        "finished demo.", min=1),
    batch: Optional[int] = typer.Option(None, "--batch", help="Latency batch size; per-sample ms is reported (default 64: the tiny model needs a batch for compute, not framework overhead, to dominate; --fast: 16).", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for training, evaluation and timing (default: all cores, or 1 when the load average already exceeds the cores: multi-threaded OpenMP collapses on an oversubscribed machine).", min=1),
    margin: float = typer.Option(100 * DEFAULT_MARGIN, "--margin", help="mAP points within which a pruned artefact "
                                 "counts as equivalent to dense: its difference's whole 95% interval must lie inside "
                                 "±margin (the headline needs that on validation).", min=0.0, max=99.0),
    scale_check: bool = typer.Option(True, "--scale-check/--no-scale-check", help="Also prune the paper-size rgbnt100 architecture (DeiT-B x 3 modalities, random weights) to 60M and 46M and time dense PyTorch vs INT8 at batch 1: latency only, about 3 minutes on 2 cores. --fast skips it."),
) -> None:
    """Synthesise the dataset, train the `synthetic` preset (both stages), prune it to a few sizes with finetuning,
    export ONNX FP32 and INT8, measure mAP on the exported files and latency side by side, print the frontier;
    then the same pruning + INT8 on the paper-size architecture (latency only)."""
    settings = DemoSettings.fast() if fast else DemoSettings()
    if not scale_check:
        settings = replace(settings, scale=None)
    err = err_console()
    if threads is None:
        threads, why = auto_threads()
        if why:
            err.print(why, soft_wrap=True, markup=False, emoji=False)
    settings = with_overrides(settings, targets=parse_targets(targets) if targets else None,
                              formats=parse_formats(formats) if formats else None, batch=batch, threads=threads,
                              seeds=seeds, margin=margin / 100)
    with rich_progress(err) as hook:
        result = run_demo(out, settings, progress=hook,
                          log=lambda msg: err.print(msg, soft_wrap=True, emoji=False, markup=False))
    con = console()
    con.print(frontier_table(result.frontier.rows, title="GraFT frontier (synthetic preset)", width=con.width))
    if result.frontier.speedup_note:
        con.print(result.frontier.speedup_note, soft_wrap=True)
    if result.frontier.verdict_note:
        con.print(result.frontier.verdict_note, soft_wrap=True)
    if result.scale is not None:
        con.print(frontier_table(result.scale.rows, title=f"{settings.scale_preset} architecture, random weights "
                                 "(latency only)", width=con.width))
    if result.headline:
        con.print(headline_line("synthetic model", result.headline, "at this width"), soft_wrap=True)
    if result.scale_headline:
        con.print(headline_line(f"{settings.scale_preset} architecture (latency only)", result.scale_headline,
                                "on this machine"), soft_wrap=True)
    total = sum(result.seconds.values())
    con.print(f"plot: {result.frontier.files.get('png', '-')}   table: {result.frontier.files.get('md')}   "
              f"time: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + ")",
              soft_wrap=True)
    rows = result.frontier.rows + (result.scale.rows if result.scale else [])
    if any(r["status"] != "ok" for r in rows):
        raise typer.Exit(1)


def headline_line(what: str, h: dict[str, Any], where: str) -> str:
    """One line: the headline artefact (workflows.demo.headline: chosen on validation) vs the dense PyTorch model:
    both speed ratios, the goal verdict, and the mAP verdicts with their 95% intervals (validation, which chose;
    test, reported)."""
    goal = f"{h['goal']:g}x goal"
    verdict = f"[green]{goal} met[/]" if h["goal_met"] else f"[yellow]below the {goal} {where}[/]"
    best = f", {h['speedup_min']:.2f}x best-of-N" if h.get("speedup_min") else ""
    fmt = "INT8" if h.get("format", "int8") == "int8" else h["format"]
    split = "validation" if h.get("chosen_on") == "val_mAP" else "test (no validation split)"
    which = {"equivalent": f"fastest pruned artefact equivalent to dense (or better) on {split}: ",
             "inconclusive": f"no pruned artefact is shown equivalent to dense on {split}; fastest not shown worse: ",
             "smallest": f"every pruned artefact is worse than dense on {split}; smallest "}.get(h.get("basis"), "")
    acc = ""
    if h.get("vs_dense"):
        acc = f"; {'val' if h.get('chosen_on') == 'val_mAP' else 'test'} mAP {h['vs_dense']}"
    if h.get("test_vs_dense") and h.get("chosen_on") == "val_mAP":
        std = f" ± {100 * h['mAP_std']:.1f}" if h.get("mAP_std") is not None else ""
        acc += (f"; test mAP (reported) {100 * h['mAP']:.1f}{std} vs dense {100 * h['dense_mAP']:.1f}: "
                f"{h['test_vs_dense']}")
    if not h.get("vs_dense"):
        which = ""
    return (f"{what}: {which}pruned {fmt} ({h['variant']}, {h['params']:,} params) runs {h['speedup']:.2f}x faster "
            f"than the dense PyTorch model ({h['variant_ms']:.3f} vs {h['dense_ms']:.3f} ms/sample p50 at batch "
            f"{h['batch']}{best}): {verdict}{acc}{regime_text(h)}")


def regime_text(h: dict[str, Any]) -> str:
    """'; the pruned INT8 at 31% of its int8 shape-true GEMM peak (overhead-bound), dense at 12% of fp32' or ''."""
    if h.get("share_of_peak") is None:
        return ""
    dense = f", dense at {100 * h['dense_share_of_peak']:.0f}% of fp32" if h.get("dense_share_of_peak") else ""
    return (f"; at {100 * h['share_of_peak']:.0f}% of its {h['peak_precision']} shape-true GEMM peak "
            f"({h['regime']}){dense}")
