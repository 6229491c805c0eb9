"""`graft-edge bench`: latency, throughput, memory, power and (optionally) mAP of models of any format."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import torch
import typer
from rich.markup import escape

from graft_edge.cli.common import (
    DTYPE_HELP,
    check_output_file,
    console,
    err_console,
    guarded,
    modalities_option,
    write_json_output,
)
from graft_edge.errors import GraftError
from graft_edge.model.embedder import check_dtype
from graft_edge.profile.bench import BenchSettings, any_failed, bench_models
from graft_edge.profile.progress import rich_progress
from graft_edge.units import format_count, parse_int_list


def _fmt(v: Any, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def machine_line(machine: dict[str, Any]) -> str:
    """One line naming the hardware and the main software versions."""
    sw = machine.get("software", {})
    gpus = ", ".join(f"{g['name']} (driver {g.get('driver') or '?'})" for g in machine.get("gpus", [])) or "no GPU"
    parts = [f"{machine.get('cpu')} ({machine.get('cores_usable')} cores)", gpus, f"python {sw.get('python')}",
             f"torch {sw.get('torch')}", f"onnxruntime {sw.get('onnxruntime') or '-'}"]
    if sw.get("tensorrt"):
        parts.append(f"tensorrt {sw['tensorrt']}")
    parts.append(f"graft-edge {sw.get('graft_edge')}")
    return " | ".join(parts)


def short_status(status: str, width: int = 24) -> str:
    """'ok' in green or 'error: ...' in red, cut to `width` characters (the full line is printed below)."""
    if status == "ok":
        return "[green]ok[/]"
    text = status if len(status) <= width else status[: width - 1] + "…"
    return f"[red]{escape(text)}[/]"


def bench_table(report: dict[str, Any], width: int = 120) -> Any:
    """Ultralytics-style table: one row per model and batch size (one row for a model that failed to load).

    "GFLOP/s" is the model's FLOPs per sample over its p50 per-sample latency; "%peak" its share of this CPU's
    shape-true GEMM peak of the same precision (fp32 / bf16 / int8: the model's own GEMM shapes at that batch on the
    fastest runtime; graft_edge.profile.peaks), left out where unknown.

    "+RSS MB" is the peak resident memory during the run minus the process's before the model was loaded
    (model + runtime + activations). Below 100 columns of `width` the per-batch ms and RSS columns are
    left out (they are in the JSON).
    """
    from rich.table import Table

    with_map = report["settings"].get("data") is not None
    worst = any("worst" in (r.get("accuracy") or {}) for r in report["results"])  # --modalities all
    power = any(run.get("power", {}).get("available") for r in report["results"] for run in r["runs"])
    roof = any((run.get("roofline") or {}).get("achieved_gflops") for r in report["results"] for run in r["runs"])
    share = any((run.get("roofline") or {}).get("share_of_peak") for r in report["results"] for run in r["runs"])
    from rich import box

    t = Table(title="graft-edge bench", caption=machine_line(report["machine"]), box=box.SIMPLE_HEAD, pad_edge=False)
    wide = width >= 100
    t.add_column("Model", overflow="fold", min_width=10)
    t.add_column("Format", overflow="fold", min_width=5)
    t.add_column("Status", overflow="fold", min_width=10)
    for col in ("MB", "Params") + (("mAP",) if with_map else ()) + (("Worst subset",) if worst else ()) + ("Batch",) + (("ms",) if wide else ()) + (
            "ms/img", "FPS") + (("+RSS MB",) if wide else ()) + (("GFLOP/s",) if roof else ()) + (("%peak",) if share else ()) + (
            ("W", "J/img") if power else ()):
        t.add_column(col, justify="right", no_wrap=True)
    for r in report["results"]:
        fmt = r["format"] or "-"
        if r.get("precision") and r["precision"] not in ("fp32", None):
            fmt = f"{fmt} {r['precision']}"
        size = _fmt(r["size_bytes"] / 1e6 if r["size_bytes"] is not None else None, ".1f")
        params = format_count(r["params_embedding"]) if r["params_embedding"] is not None else "-"
        acc = r.get("accuracy")
        head = [r["model"] if len(r["model"]) <= 40 else Path(r["model"]).name, fmt]
        if r["format"] is None or r["load_s"] is None or (with_map and acc is None):  # failed before timing
            t.add_row(*head, short_status(r["status"]), size, params, *(["-"] if with_map else []),
                      *(["-"] if worst else []),
                      ",".join(str(run["batch"]) for run in r["runs"]), *["-"] * (4 if wide else 2),
                      *(["-"] if roof else []), *(["-"] if share else []), *(["-", "-"] if power else []))
            continue
        for i, run in enumerate(r["runs"]):
            lat = run.get("latency") or {}
            status = short_status(run["status"])
            row = [*(head if i == 0 else ["", ""]), status, size if i == 0 else "", params if i == 0 else ""]
            if with_map:
                rr = f"/{100 * acc['rerank']['mAP']:.1f}" if "rerank" in acc else ""  # plain/re-ranked
                row.append(f"{100 * acc['mAP']:.1f}{rr}" if i == 0 else "")
            if worst:
                w = acc.get("worst") if i == 0 else None
                row.append(f"{100 * w['mAP']:.1f} {'+'.join(w['modalities'])}" if w else "")
            cpu = run.get("memory", {}).get("cpu", {})
            row += [str(run["batch"])] + ([_fmt(lat.get("p50_ms"))] if wide else []) + [
                _fmt(lat.get("per_sample_ms"), ".3f"), _fmt(lat.get("throughput"), ".1f")] + (
                [_fmt(cpu.get("rss_increase_mb") if cpu.get("available") else None, ".0f")] if wide else [])
            rl = run.get("roofline") or {}
            if roof:
                row.append(_fmt(rl.get("achieved_gflops"), ".1f"))
            if share:
                got = rl.get("share_of_peak")
                row.append(f"{100 * got:.0f} {rl['peak_precision']}" if got else "")
            if power:
                pw = run.get("power", {})
                row += [_fmt(pw.get("mean_w") if pw.get("available") else None, ".1f"),
                        _fmt(pw.get("energy_per_sample_j") if pw.get("available") else None, ".4f")]
            t.add_row(*row)
    return t


def breakdown_tables(report: dict[str, Any], top: int = 8) -> list[Any]:
    """One table per profiled run: ms per call and share by group (GEMM, attention, other, framework) and top op types."""
    from rich import box
    from rich.table import Table

    tables = []
    for r in report["results"]:
        for run in r["runs"]:
            prof = run.get("profile")
            if not prof:
                continue
            t = Table(title=f"{Path(r['model']).name} batch {run['batch']}: where the time goes ({prof['profiler']})",
                      caption=f"profiled {prof['profiled_ms']:.2f} ms of {prof['profiled_wall_ms']:.2f} ms per profiled "
                              f"call ({100 * (prof['coverage'] or 0):.0f}%); unprofiled {prof['measured_ms']:.2f} ms",
                      box=box.SIMPLE_HEAD, pad_edge=False)
            for col, justify in (("op type", "left"), ("group", "left"), ("ms/call", "right"), ("share", "right")):
                t.add_column(col, justify=justify)
            total = prof["profiled_ms"] or 1.0
            for g, ms in prof["groups"].items():
                t.add_row(f"[bold]{g}[/]", "", f"{ms:.3f}", f"{100 * ms / total:.1f}%")
            for op in prof["ops"][:top]:
                t.add_row(escape(op["op"]), op["group"], f"{op['ms']:.3f}", f"{100 * (op['share'] or 0):.1f}%")
            tables.append(t)
    return tables




@guarded
def bench_cmd(
    models: List[Path] = typer.Argument(..., help="One or more models: checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.engine/.plan)."),
    batch: str = typer.Option("1", "--batch", help="Comma-separated batch sizes to time, e.g. 1,8,32 (samples per call)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed warm-up calls per model and batch size.", min=0),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed calls per model and batch size (exclusive with --seconds).", min=1),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time budget in seconds per model and batch size (at least 5 calls). Default when neither is given: 5 s."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for PyTorch / ONNX Runtime (default: the runtime's own choice, usually all cores).", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N] (ONNX Runtime uses its CUDA provider on cuda)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root: also measure mAP/R1/R5/R10 of each model on its query/gallery splits."),
    peaks: bool = typer.Option(True, "--peaks/--no-peaks", help="Report each run's share of this CPU's shape-true GEMM peak of its precision (the model's own GEMM shapes at that batch, timed on torch, ONNX Runtime and OpenVINO): measured on first use (seconds; a progress line says so) and cached per CPU, --threads and runtime versions in ~/.cache/graft-edge/ ($GRAFT_EDGE_CACHE moves it). --no-peaks uses cached peaks only."),
    square_peaks: bool = typer.Option(False, "--square-peaks", help="Also measure the square 2048^3 GEMM peaks (about 30 s, cached like the others) when none are cached; the JSON reports each run's share of both."),
    profile: bool = typer.Option(False, "--profile", help="Break each run's time per call (ms) into op types and GEMM / attention / other / framework work with the runtime's own profiler (torch.profiler, ONNX Runtime profiling, OpenVINO performance counters), printed after the table and in the JSON."),
    dtype: str = typer.Option("fp32", "--dtype", help=f"Precision PyTorch checkpoints run at: {DTYPE_HELP}. Exported artefacts run at the precision they were exported in."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full results (schema graft-edge/bench v2) to this file ('-' for stdout)."),
    eval_batch_size: int = typer.Option(64, "--eval-batch-size", help="Images per forward pass for --data evaluation.", min=1),
    rerank: bool = typer.Option(False, "--rerank", help="With --data: also k-reciprocal re-ranked mAP/CMC (shown as plain/re-ranked mAP)."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated subset of the models' modalities (e.g. rgb,nir) to time and evaluate, as if the other sensors were missing; 'all': time with every sensor and, with --data, evaluate every non-empty subset (accuracy.subsets, accuracy.worst; a 'Worst subset' column). Default: every modality."),
) -> None:
    """Time models side by side: latency mean/p50/p90/p99/min/max (ms), throughput (samples/s), peak memory,
    parameters, size on disk, and on NVIDIA GPUs power (W), energy per sample (J) and utilisation.

    A model that is missing or fails (bad file, unsupported batch size, --data of other modalities) gets an
    "error: ..." status; the rest are still measured, and the exit code is 1.
    """
    check_output_file(json_out, "--json")
    if iters is not None and seconds is not None:
        raise GraftError("give either --iters or --seconds, not both")
    if seconds is not None and not seconds > 0:
        raise GraftError(f"--seconds {seconds}: expected a positive number")
    dev = device.strip().lower()
    if not (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise GraftError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if dev == "cpu":  # a precision this CPU cannot run is an option error, not a per-model failure
        check_dtype(dtype, torch.device("cpu"))
    settings = BenchSettings(batches=parse_int_list(batch, "--batch"), warmup=warmup, iters=iters, seconds=seconds,
                             threads=threads, device=dev, data=str(data) if data else None,
                             eval_batch_size=eval_batch_size, rerank=rerank, dtype=dtype.strip().lower(), peaks=peaks,
                             square_peaks=square_peaks, profile=profile,
                             modalities=modalities_option(modalities, every_subset=True))
    with rich_progress(err_console()) as hook:
        report = bench_models(models, settings, progress=hook)
    out = err_console() if json_out is not None and str(json_out) == "-" else console()  # stdout stays pure JSON
    out.print(bench_table(report, width=out.width))
    if profile:
        for table in breakdown_tables(report):
            out.print(table)
    for r in report["results"]:
        if r["status"] != "ok":
            err_console().print(f"[bold red]error:[/] {escape(str(r['model']) + ': ' + str(r['error']))}", soft_wrap=True, emoji=False)
    write_json_output(json_out, report)
    if any_failed(report):
        raise typer.Exit(1)
