"""The roofline: this CPU's measured GEMM peaks per precision, and each artefact's share of its own precision's peak.

Two peaks, both the best of the runtimes graft-edge ships (graft_edge.profile.gemm_timers: fp32 and bf16 on torch and
OpenVINO, INT8 on ONNX Runtime MatMulInteger and OpenVINO):
  shape-true  the model's own GEMMs (graft_edge.model.gemm_shapes, at the batch it runs): their FLOPs over the summed
              time of the fastest call of each shape. Shares are judged against it: it is what the CPU can do for
              *these* matrix products, small-M and attention products included.
  square      n x n @ n x n (n = 2048): the best case, reported beside it (`bench --square-peaks`, the benchmarks).
Both are measured once and cached per machine (CPU model, thread count, runtime versions): square peaks in
`peaks_cache_path()`, one timing per (runtime, precision, shape) in `shape_cache_path()`, so the shapes that pruned
variants share are timed once. Shape-true peaks are measured on first use with a progress line (seconds for the
demo's models); GRAFT_EDGE_PEAKS=off never measures (cached values are still used).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from graft_edge.artefact.versions import software_versions
from graft_edge.cpu import cpu_model, has_bf16
from graft_edge.errors import one_line
from graft_edge.fileio import write_json
from graft_edge.model.flops import model_flops_per_sample
from graft_edge.model.gemm_shapes import GemmShape, model_gemm_shapes, shapes_from_meta, total_flops
from graft_edge.profile.gemm_timers import RUNTIMES, time_gemm
from graft_edge.profile.progress import ProgressHook, no_progress

PEAK_PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_N = 2048
DEFAULT_SECONDS = 2.0
SHAPE_SECONDS = 0.05  # timed calls per shape (at least 3): the fastest call is what counts
PEAKS_ENV = "GRAFT_EDGE_PEAKS"  # "off": never measure peaks (cached ones are still used)


def _cache_dir() -> Path:
    return Path(os.environ.get("GRAFT_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graft-edge"))


def peaks_cache_path() -> Path:
    """$GRAFT_EDGE_CACHE or $XDG_CACHE_HOME/graft-edge (default ~/.cache/graft-edge) / gemm_peaks.json."""
    return _cache_dir() / "gemm_peaks.json"


def shape_cache_path() -> Path:
    """The per-shape GEMM timings beside the square peaks: gemm_shape_times.json."""
    return _cache_dir() / "gemm_shape_times.json"


def measuring_allowed(requested: bool) -> bool:
    """`requested`, unless $GRAFT_EDGE_PEAKS is off (CI, a busy shared machine)."""
    return requested and os.environ.get(PEAKS_ENV, "").strip().lower() not in ("off", "0", "no", "false")


def _cache_key(threads: int | None) -> str:
    sw = software_versions()
    return (f"{cpu_model()}|threads={threads or 'default'}|torch {sw.get('torch')}|onnxruntime {sw.get('onnxruntime')}"
            f"|openvino {sw.get('openvino')}")


def peak_precision(precision: str | None) -> str | None:
    """The peak an artefact of this precision is measured against: int8-dynamic / int8-static -> int8."""
    if not precision:
        return None
    p = str(precision).lower()
    return "int8" if p.startswith("int8") else p


def precisions_here() -> tuple[str, ...]:
    """The precisions this CPU multiplies natively (bf16 only with AVX512-BF16 / AMX: emulated bf16 is no peak)."""
    return tuple(p for p in PEAK_PRECISIONS if p != "bf16" or has_bf16())


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, entries: dict[str, Any]) -> None:
    try:
        write_json(path, entries)
    except OSError:  # an unwritable cache only costs a re-measurement next time
        pass


def measure_peaks(threads: int | None = None, n: int = DEFAULT_N, seconds: float = DEFAULT_SECONDS) -> dict[str, Any]:
    """Square peaks: {"fp32"|"bf16"|"int8": {"gflops": best of its runtimes, "by_runtime": {...}}, "n", "threads", ...}."""
    shape = GemmShape(n, n, n)
    out: dict[str, Any] = {"n": n, "threads": threads, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "loadavg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    for precision in PEAK_PRECISIONS:
        by_runtime: dict[str, Any] = {}
        for runtime in RUNTIMES[precision] if precision in precisions_here() else ():
            try:
                by_runtime[runtime] = round(shape.flops / time_gemm(runtime, precision, shape, threads, seconds) / 1e9, 1)
            except Exception as exc:  # a missing runtime leaves its entry out, with why
                by_runtime[runtime] = f"error: {one_line(exc)}"
        rates = [v for v in by_runtime.values() if isinstance(v, float)]
        out[precision] = {"gflops": max(rates) if rates else None, "by_runtime": by_runtime}
    return out


def machine_peaks(threads: int | None = None, measure: bool = False, cache: Path | None = None) -> dict[str, Any] | None:
    """This machine's cached square peaks for `threads`; measured (and cached) when missing and `measure`; else None."""
    path = cache or peaks_cache_path()
    key = _cache_key(threads)
    entries = _read(path)
    if key in entries or not measuring_allowed(measure):
        return entries.get(key)
    entries[key] = measure_peaks(threads)
    _write(path, entries)
    return entries[key]


def shape_peaks(shapes: Sequence[GemmShape], precisions: Sequence[str], threads: int | None = None,
                measure: bool = True, seconds: float = SHAPE_SECONDS, cache: Path | None = None,
                progress: ProgressHook = no_progress) -> dict[str, Any] | None:
    """Shape-true peaks of `shapes` for each of `precisions`: {"gflop", "shapes", precision: {"gflops", "by_runtime"}}.

    A runtime's rate is the shapes' FLOPs over sum(count x fastest call) of its shape timings; a precision's peak is
    the best runtime's. Timings missing from the cache are measured when `measure` (else that runtime is left out);
    None when no precision has a peak.
    """
    wanted = [p for p in dict.fromkeys(peak_precision(p) for p in precisions) if p in precisions_here()]
    if not shapes or not wanted:
        return None
    path = cache or shape_cache_path()
    key = _cache_key(threads)
    entries = _read(path)
    times: dict[str, Any] = entries.setdefault(key, {})
    jobs = [(p, rt, s) for p in wanted for rt in RUNTIMES[p] for s in shapes if f"{rt}/{p}/{s.key()}" not in times]
    if jobs and measuring_allowed(measure):
        advance = progress(f"GEMM peaks at the model's {len(shapes)} shapes (once per machine)", len(jobs))
        for precision, runtime, shape in jobs:
            try:
                times[f"{runtime}/{precision}/{shape.key()}"] = time_gemm(runtime, precision, shape, threads, seconds)
            except Exception as exc:
                times[f"{runtime}/{precision}/{shape.key()}"] = f"error: {one_line(exc)}"
            advance(1)
        _write(path, entries)
    flops = total_flops(shapes)
    out: dict[str, Any] = {"kind": "shape-true", "gflop": flops / 1e9, "shapes": len(shapes)}
    for precision in wanted:
        by_runtime: dict[str, Any] = {}
        for runtime in RUNTIMES[precision]:
            got = [times.get(f"{runtime}/{precision}/{s.key()}") for s in shapes]
            bad = next((g for g in got if not isinstance(g, float)), 0.0)
            if bad is None:  # not measured: left out
                continue
            by_runtime[runtime] = bad if isinstance(bad, str) else round(
                flops / sum(s.count * t for s, t in zip(shapes, got)) / 1e9, 1)
        rates = [v for v in by_runtime.values() if isinstance(v, float)]
        out[precision] = {"gflops": max(rates) if rates else None, "by_runtime": by_runtime}
    return out if any((out.get(p) or {}).get("gflops") for p in wanted) else None


def roofline(flops_per_sample: float | None, ms_per_sample: float | None, precision: str | None,
             peaks: dict[str, Any] | None, square: dict[str, Any] | None = None) -> dict[str, Any]:
    """{gflop_per_sample, achieved_gflops, peak_precision, peak_gflops, share_of_peak, square_peak_gflops,
    share_of_square_peak} (None where unknown): `peaks` are the shape-true peaks, `square` the n^3 ones."""
    achieved = flops_per_sample / (ms_per_sample / 1000.0) / 1e9 if flops_per_sample and ms_per_sample else None
    key = peak_precision(precision)

    def peak_of(table: dict[str, Any] | None) -> float | None:
        return ((table or {}).get(key) or {}).get("gflops") if key else None

    peak, sq = peak_of(peaks), peak_of(square)
    return {"gflop_per_sample": flops_per_sample / 1e9 if flops_per_sample else None, "achieved_gflops": achieved,
            "peak_precision": key, "peak_gflops": peak,
            "share_of_peak": achieved / peak if achieved is not None and peak else None,
            "square_peak_gflops": sq, "share_of_square_peak": achieved / sq if achieved is not None and sq else None}


def _live_model(embedder: Any) -> Any:
    inner = getattr(embedder, "inner", embedder)  # a SubsetEmbedder (--modalities) wraps the runtime's embedder
    model = getattr(inner, "model", None)
    return model if model is not None and hasattr(model, "cfg") else None


def embedder_flops(embedder: Any) -> int | None:
    """FLOPs per sample of what an Embedder runs: counted on a live model, else from the artefact's metadata."""
    model = _live_model(embedder)
    if model is not None:
        return model_flops_per_sample(model)
    value = embedder.info.extra.get("flops_per_sample")
    return int(value) if value else None


def embedder_gemm_shapes(embedder: Any, batch: int = 1) -> tuple[GemmShape, ...] | None:
    """The GEMM shapes an Embedder runs at `batch`: counted on a live model, else from the artefact's metadata."""
    model = _live_model(embedder)
    if model is not None:
        return model_gemm_shapes(model, batch)
    return shapes_from_meta(embedder.info.extra.get("gemm_shapes"), batch)


def embedders_peaks(embedders: dict[str, Any], precision: dict[str, str], batch: int, threads: int | None,
                    device: str = "cpu", measure: bool = True,
                    progress: ProgressHook = no_progress) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the cached square peaks, {key: shape-true peaks of that embedder's GEMMs at `batch` for its precision});
    nothing on a GPU."""
    if device.startswith("cuda"):
        return None, {k: None for k in embedders}
    true = {}
    for key, emb in embedders.items():
        shapes = embedder_gemm_shapes(emb, batch)
        true[key] = shape_peaks(shapes, [precision[key]], threads, measure=measure, progress=progress) if shapes else None
    return machine_peaks(threads), true
