"""Benchmark models of any format: latency statistics per batch size, memory, power, accuracy.

`bench_models` returns a plain JSON-able dict in the documented schema below (SCHEMA_VERSION);
`validate_bench_result` checks a dict against it (used by the tests and by anyone reading files).

Schema "graft-edge/bench" v3 (v2 + shape-true peaks, square peaks beside them, the profile breakdown)::

    {
      "schema": "graft-edge/bench", "schema_version": 3, "created": "<ISO-8601 UTC>",
      "machine": {cpu, cpu_flags, cores, cores_usable, memory_gb, os, arch, gpus: [...], software: {...}, argv,
                  gemm_peaks: null | {n, threads, measured, loadavg,          # square n^3 peaks (cached or --square-peaks)
                                      "fp32"|"bf16"|"int8": {gflops: float|null, by_runtime: {runtime: float|str}}}},
      "settings": {batches: [int], warmup: int, iters: int|null, seconds: float|null,
                   threads: int|null, device: str, data: str|null, rerank: bool,
                   modalities: [str]|null, dtype: "fp32"|"bf16"|"fp16" (what PyTorch checkpoints ran at), peaks: bool,
                   square_peaks: bool, profile: bool},
      "results": [                                   # one per MODEL, in the order given
        {"model": str, "status": "ok" | "error: <one line>", "error": str|null,
         "format": "torch"|"onnx"|"tensorrt"|"openvino"|null,
         "precision": str|null,                      # fp32 | bf16 | fp16 | int8-dynamic | int8-static | int8
         "params_embedding": int|null, "params_nonzero": int|null,
         "size_bytes": int|null, "files": [str],           # incl. ONNX external-data files
         "modalities": [str], "img_size": [H, W], "device": str, "load_s": float|null,
         "flops_per_sample": int|null,               # counted once per model (graft_edge.model.flops)
         "accuracy": null | {"mAP", "R1", "R5", "R10" (fractions), "num_query", "num_gallery",
                             ["rerank": {"mAP", "R1", "R5", "R10", "k1", "k2", "lambda"}],
                             # --modalities all: every non-empty subset of the sensors (graft_edge.robustness)
                             ["subsets": [{"modalities": [str], "mAP", "R1", "R5", "R10", ...}],
                              "worst": {"modalities": [str], "mAP", "R1"}]},
         "runs": [                                   # one per batch size
           {"batch": int, "status": "ok" | "error: ...", "error": str|null,
            "latency": null | {batch, n, mean_ms, std_ms, p50_ms, p90_ms, p99_ms, min_ms, max_ms,
                               per_sample_ms, throughput},
            "memory": {"cpu": {available, rss_peak_mb, rss_start_mb, rss_increase_mb, method}
                              | {available: false, reason},
                       "gpu": {available, ...} | {available: false, reason}},
            "power": {available: true, method, energy_j, mean_w, energy_per_sample_j, duration_s, [max_w]}
                     | {available: false, reason},
            "utilization": {available: true, mean_pct, max_pct, samples} | {available: false, reason},
            "shape_peaks": null | {kind: "shape-true", gflop, shapes,    # the model's GEMMs at this batch
                                   <precision>: {gflops, by_runtime: {runtime: float|str}}},
            "roofline": null | {gflop_per_sample, achieved_gflops (= FLOPs / p50 per sample), peak_precision
                                (fp32 | bf16 | int8 | fp16), peak_gflops (shape-true), share_of_peak (achieved / peak),
                                square_peak_gflops, share_of_square_peak},
            "profile": null | graft_edge.profile.breakdown record (--profile)}
         ]}
      ]
    }

`rss_increase_mb` is the run's peak RSS minus the RSS before the model was loaded, i.e. model +
runtime + activations.  Percentiles: see `graft_edge.profile.stats`.
"""
from __future__ import annotations

import datetime as _dt
import gc
import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from graft_edge.data import dataset_modalities
from graft_edge.errors import GraftError, one_line
from graft_edge.evaluation import ALL_SUBSETS, evaluate_embedder, evaluate_subsets
from graft_edge.profile.breakdown import check_breakdown, profile_run
from graft_edge.profile.hardware import machine_info
from graft_edge.profile.latency import DEFAULT_WARMUP, bound_call, synthetic_batch, time_embedder, warm_up
from graft_edge.profile.peaks import (
    PEAK_PRECISIONS,
    embedder_flops,
    embedder_gemm_shapes,
    machine_peaks,
    roofline,
    shape_peaks,
)
from graft_edge.profile.progress import ProgressHook, no_progress
from graft_edge.profile.stats import summarize
from graft_edge.profile.telemetry import GpuMonitor, MemorySampler, not_available, rss_mb
from graft_edge.retrieval.metrics import RerankConfig
from graft_edge.runtime import artefact_files, artefact_size, load_embedder, runtime_of

SCHEMA = "graft-edge/bench"
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class BenchSettings:
    """What to measure (the CLI options)."""

    batches: tuple[int, ...] = (1,)
    warmup: int = DEFAULT_WARMUP
    iters: int | None = None
    seconds: float | None = None
    threads: int | None = None
    device: str = "cpu"
    data: str | None = None
    eval_batch_size: int = 64
    rerank: bool = False  # with data: also k-reciprocal re-ranked accuracy (accuracy["rerank"])
    modalities: tuple[str, ...] | None = None  # time / evaluate on this subset (missing sensors); None: all;
    # ("all",): time with every sensor, evaluate every subset (the robustness table)
    dtype: str = "fp32"  # what PyTorch checkpoints run at (exported artefacts: their own precision)
    peaks: bool = True  # measure the shape-true GEMM peaks on first use (graft_edge.profile.peaks); False: cached only
    square_peaks: bool = False  # also measure the square n^3 peaks when none are cached (about 30 s)
    profile: bool = False  # break each run's time into op types with the runtime's own profiler

    def to_dict(self) -> dict[str, Any]:
        """The `settings` record."""
        return {"batches": list(self.batches), "warmup": self.warmup, "iters": self.iters,
                "seconds": self.seconds, "threads": self.threads, "device": self.device, "data": self.data,
                "rerank": self.rerank, "modalities": list(self.modalities) if self.modalities else None,
                "dtype": self.dtype, "peaks": self.peaks, "square_peaks": self.square_peaks, "profile": self.profile}


def check_data_modalities(info_modalities: Sequence[str], data_root: str | Path) -> None:
    """GraftError unless the dataset holds every modality the model takes."""
    held = dataset_modalities(data_root)
    missing = [m for m in info_modalities if m not in held]
    if missing:
        raise GraftError(f"--data {data_root} holds {','.join(held) or 'no'} images but the model takes "
                         f"{','.join(info_modalities)} (missing {','.join(missing)})")


def _gpu_torch_memory(embedder: Any) -> tuple[Callable[[], None], Callable[[], dict[str, Any]]]:
    """reset/read torch's CUDA allocator peak for a torch-backed embedder on a GPU (else no-ops)."""
    dev = getattr(embedder, "device", None)
    if getattr(dev, "type", None) != "cuda":
        return (lambda: None), (lambda: {})

    def reset() -> None:
        torch.cuda.reset_peak_memory_stats(dev)

    def read() -> dict[str, Any]:
        return {"torch_max_allocated_mb": torch.cuda.max_memory_allocated(dev) / 1024**2,
                "torch_max_reserved_mb": torch.cuda.max_memory_reserved(dev) / 1024**2}

    return reset, read


def bench_run(embedder: Any, batch: int, settings: BenchSettings, rss_before_load: float | None,
              gpu: GpuMonitor | None, gpu_before_load: int | None, progress: ProgressHook,
              label: str) -> dict[str, Any]:
    """One (model, batch) measurement: warm-up, timed loop under telemetry, summary record."""
    inputs = synthetic_batch(embedder.info, batch)
    total = settings.warmup + settings.iters if settings.iters is not None else None
    advance = progress(f"{label} batch {batch}", total)
    # inputs staged on the device and warm-up outside the monitored window (first calls allocate, autotune, JIT)
    call = bound_call(embedder, inputs)
    warm_up(embedder, inputs, settings.warmup, on_iter=advance, call=call)
    reset_torch, read_torch = _gpu_torch_memory(embedder)
    reset_torch()
    on_gpu = settings.device.startswith("cuda")
    mon = gpu if (gpu is not None and on_gpu) else None
    with MemorySampler(gpu=mon) as mem:
        if mon is not None:
            mon.start()
        times = time_embedder(embedder, inputs, warmup=0, iters=settings.iters, seconds=settings.seconds,
                              on_iter=advance, call=call)
        tele = mon.stop(batch * len(times), baseline_used=gpu_before_load) if mon is not None else None
    stats = summarize(times, batch)
    if tele is None:
        reason = "not measured: --device cpu" if not on_gpu else (gpu.reason if gpu else "no GPU monitor")
        tele = {"power": not_available(reason), "utilization": not_available(reason),
                "memory": not_available(reason)}
    gpu_mem = dict(tele["memory"])
    torch_mem = read_torch()
    if torch_mem:
        gpu_mem.update(torch_mem)
        gpu_mem["available"] = True
        gpu_mem.pop("reason", None)
    return {"batch": batch, "status": "ok", "error": None, "latency": stats.to_dict(),
            "memory": {"cpu": mem.result(baseline_mb=rss_before_load), "gpu": gpu_mem},
            "power": tele["power"], "utilization": tele["utilization"]}


def _error_run(batch: int, message: str) -> dict[str, Any]:
    na = not_available("run failed")
    return {"batch": batch, "status": f"error: {message}", "error": message, "latency": None,
            "memory": {"cpu": na, "gpu": na}, "power": na, "utilization": na, "shape_peaks": None, "roofline": None,
            "profile": None}


def _preimport_backend(path: Path) -> None:
    """Import the runtime of `path`'s format (torch, onnxruntime, tensorrt) before the RSS baseline."""
    try:
        importlib.import_module(f"graft_edge.runtime.{runtime_of(path)}_backend")
    except Exception:  # load_embedder reports the real problem with a proper message
        pass


def _roofline_of(embedder: Any, res: dict[str, Any], run: dict[str, Any], settings: BenchSettings,
                 square: dict[str, Any] | None, progress: ProgressHook) -> None:
    """The run's shape-true peaks (the model's GEMMs at its batch) and its roofline against them and the square ones."""
    shapes = embedder_gemm_shapes(embedder, run["batch"]) if settings.device == "cpu" else None
    run["shape_peaks"] = shape_peaks(shapes, [res["precision"]], settings.threads, measure=settings.peaks,
                                     progress=progress) if shapes and res["precision"] else None
    run["roofline"] = roofline(res["flops_per_sample"], run["latency"]["per_sample_ms"], res["precision"],
                               run["shape_peaks"], square)


def bench_model(path: str | Path, settings: BenchSettings, gpu: GpuMonitor | None = None,
                progress: ProgressHook = no_progress, peaks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Benchmark one model file; never raises for a bad model (the status says what went wrong)."""
    path = Path(path)
    res: dict[str, Any] = {
        "model": str(path), "status": "ok", "error": None, "format": None, "precision": None,
        "params_embedding": None, "params_nonzero": None, "size_bytes": None, "files": [],
        "modalities": [], "img_size": [], "device": settings.device, "load_s": None, "flops_per_sample": None,
        "accuracy": None, "runs": [],
    }
    _preimport_backend(path)  # library imports are not the model's memory
    gc.collect()
    rss0 = rss_mb()
    gpu0 = gpu.memory_used() if gpu is not None and settings.device.startswith("cuda") else None
    embedder = None
    try:
        if path.is_file():
            res["files"] = [str(f) for f in artefact_files(path)]
            res["size_bytes"] = artefact_size(path)
        t0 = time.perf_counter()
        every = settings.modalities == (ALL_SUBSETS,)
        embedder = load_embedder(path, device=settings.device, threads=settings.threads,
                                 modalities=None if every else settings.modalities, dtype=settings.dtype)
        res["load_s"] = time.perf_counter() - t0
        info = embedder.info
        res.update(format=info.format, precision=info.extra.get("precision", "fp32" if info.format == "torch" else None),
                   params_embedding=info.params_embedding, params_nonzero=info.params_nonzero,
                   modalities=list(info.modalities), img_size=list(info.img_size),
                   flops_per_sample=embedder_flops(embedder))
        if settings.data:
            check_data_modalities(info.modalities, settings.data)
            advance = progress(f"{path.name} mAP" + (" of every sensor subset" if every else ""), None)
            evaluate = evaluate_subsets if every else evaluate_embedder
            res["accuracy"] = evaluate(embedder, settings.data, batch_size=settings.eval_batch_size,
                                       progress=advance, rerank_cfg=RerankConfig() if settings.rerank else None)
    except Exception as exc:  # one line per bad model; the others are still measured
        msg = one_line(exc)
        res.update(status=f"error: {msg}", error=msg)
        res["runs"] = [_error_run(b, msg) for b in settings.batches]
        return res
    failed = []
    for batch in settings.batches:
        try:
            run = bench_run(embedder, batch, settings, rss0, gpu, gpu0, progress, path.name)
            _roofline_of(embedder, res, run, settings, peaks, progress)
            run["profile"] = profile_run(embedder, path, batch, settings.threads, settings.dtype) \
                if settings.profile else None
            res["runs"].append(run)
        except Exception as exc:
            msg = one_line(exc)
            res["runs"].append(_error_run(batch, msg))
            failed.append(f"batch {batch}: {msg}")
    if failed:
        res["error"] = "; ".join(failed)
        res["status"] = f"error: {res['error']}"
    del embedder
    gc.collect()
    return res


def bench_models(paths: Sequence[str | Path], settings: BenchSettings,
                 progress: ProgressHook = no_progress) -> dict[str, Any]:
    """Benchmark every model in turn (same settings, same process) and return the schema's dict (SCHEMA_VERSION)."""
    if not paths:
        raise GraftError("no MODEL given: pass one or more checkpoints, .onnx files or TensorRT engines")
    if settings.data and not Path(settings.data).is_dir():
        raise GraftError(f"--data {settings.data} does not exist or is not a folder")
    gpu = GpuMonitor(settings.device) if settings.device.startswith("cuda") else None
    peaks = None if settings.device.startswith("cuda") else machine_peaks(settings.threads,
                                                                           measure=settings.square_peaks)
    try:
        results = [bench_model(p, settings, gpu, progress, peaks) for p in paths]
    finally:
        if gpu is not None:
            gpu.close()
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {**machine_info(), "gemm_peaks": peaks}, "settings": settings.to_dict(), "results": results}


def any_failed(report: dict[str, Any]) -> bool:
    """True when any model or batch in a bench report failed."""
    return any(r["status"] != "ok" or any(run["status"] != "ok" for run in r["runs"]) for r in report["results"])


# ------------------------------------------------------------------ schema validation

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))


def _check(obj: Any, key: str, types: Any, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise GraftError(f"bench JSON: {where}.{key} is missing")
    val = obj[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(val, allowed) or (isinstance(val, bool) and bool not in allowed):
        raise GraftError(f"bench JSON: {where}.{key} = {val!r} has the wrong type")
    return val


def _check_optional_record(rec: Any, where: str, fields: dict[str, Any]) -> None:
    if not isinstance(rec, dict) or not isinstance(rec.get("available"), bool):
        raise GraftError(f"bench JSON: {where} must be a record with a boolean 'available'")
    if not rec["available"]:
        _check(rec, "reason", str, where)
        return
    for key, types in fields.items():
        _check(rec, key, types, where)


def _check_roofline(rec: dict[str, Any], where: str) -> None:
    for key in ("gflop_per_sample", "achieved_gflops", "peak_gflops", "share_of_peak", "square_peak_gflops",
                "share_of_square_peak"):
        v = _check(rec, key, _OPT_NUM, where)
        if v is not None and not v > 0:
            raise GraftError(f"bench JSON: {where}.{key} must be positive")
    _check(rec, "peak_precision", _OPT_STR, where)


def validate_bench_result(doc: Any) -> None:
    """Raise GraftError naming the first field that breaks schema graft-edge/bench v3."""
    if not isinstance(doc, dict):
        raise GraftError("bench JSON: the document must be an object")
    if doc.get("schema") != SCHEMA or doc.get("schema_version") != SCHEMA_VERSION:
        raise GraftError(f"bench JSON: expected schema {SCHEMA!r} version {SCHEMA_VERSION}")
    _check(doc, "created", str, "$")
    machine = _check(doc, "machine", dict, "$")
    for key, types in (("cpu", str), ("cores", _OPT_INT), ("gpus", list), ("software", dict)):
        _check(machine, key, types, "$.machine")
    for key in ("python", "torch", "onnxruntime", "tensorrt", "graft_edge"):
        _check(machine["software"], key, _OPT_STR, "$.machine.software")
    peaks = _check(machine, "gemm_peaks", (dict, type(None)), "$.machine")
    for key in PEAK_PRECISIONS if peaks else ():
        _check(_check(peaks, key, dict, "$.machine.gemm_peaks"), "gflops", _OPT_NUM, f"$.machine.gemm_peaks.{key}")
    st = _check(doc, "settings", dict, "$")
    batches = _check(st, "batches", list, "$.settings")
    if not batches or not all(isinstance(b, int) and b > 0 for b in batches):
        raise GraftError("bench JSON: $.settings.batches must be positive integers")
    for key, types in (("warmup", int), ("iters", _OPT_INT), ("seconds", _OPT_NUM), ("threads", _OPT_INT),
                       ("device", str), ("data", _OPT_STR), ("dtype", str), ("peaks", bool), ("square_peaks", bool),
                       ("profile", bool)):
        _check(st, key, types, "$.settings")
    for i, r in enumerate(_check(doc, "results", list, "$")):
        w = f"$.results[{i}]"
        _check(r, "model", str, w)
        status = _check(r, "status", str, w)
        if status != "ok" and not status.startswith("error: "):
            raise GraftError(f"bench JSON: {w}.status must be 'ok' or 'error: ...'")
        for key, types in (("error", _OPT_STR), ("format", _OPT_STR), ("precision", _OPT_STR),
                           ("params_embedding", _OPT_INT), ("params_nonzero", _OPT_INT), ("size_bytes", _OPT_INT),
                           ("files", list), ("modalities", list), ("img_size", list), ("device", str),
                           ("load_s", _OPT_NUM), ("flops_per_sample", _OPT_INT), ("accuracy", (dict, type(None))),
                           ("runs", list)):
            _check(r, key, types, w)
        if r["accuracy"] is not None:
            for key in ("mAP", "R1", "R5", "R10"):
                v = _check(r["accuracy"], key, _NUM, f"{w}.accuracy")
                if not 0.0 <= v <= 1.0:
                    raise GraftError(f"bench JSON: {w}.accuracy.{key} must be a fraction in [0, 1]")
        if len(r["runs"]) != len(batches):
            raise GraftError(f"bench JSON: {w}.runs must hold one run per batch size")
        for j, run in enumerate(r["runs"]):
            wr = f"{w}.runs[{j}]"
            _check(run, "batch", int, wr)
            rs = _check(run, "status", str, wr)
            lat = _check(run, "latency", (dict, type(None)), wr)
            if rs == "ok":
                if lat is None:
                    raise GraftError(f"bench JSON: {wr}.latency is required when status is ok")
                for key in ("batch", "n"):
                    _check(lat, key, int, f"{wr}.latency")
                for key in ("mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms",
                            "per_sample_ms", "throughput"):
                    _check(lat, key, _NUM, f"{wr}.latency")
                if not lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]:
                    raise GraftError(f"bench JSON: {wr}.latency percentiles are not ordered")
                _check_roofline(_check(run, "roofline", dict, wr), f"{wr}.roofline")
                _check(run, "shape_peaks", (dict, type(None)), wr)
                prof = _check(run, "profile", (dict, type(None)), wr)
                if prof is not None:
                    check_breakdown(prof, f"{wr}.profile")
            elif not rs.startswith("error: "):
                raise GraftError(f"bench JSON: {wr}.status must be 'ok' or 'error: ...'")
            mem = _check(run, "memory", dict, wr)
            _check_optional_record(mem.get("cpu"), f"{wr}.memory.cpu", {"rss_peak_mb": _NUM})
            _check_optional_record(mem.get("gpu"), f"{wr}.memory.gpu", {})
            _check_optional_record(run.get("power"), f"{wr}.power",
                                   {"energy_j": _NUM, "mean_w": _OPT_NUM, "energy_per_sample_j": _OPT_NUM})
            _check_optional_record(run.get("utilization"), f"{wr}.utilization", {"mean_pct": _NUM})
