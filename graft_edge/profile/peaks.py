"""The roofline: this CPU's measured GEMM peak per precision, and each artefact's share of its own precision's peak.

Peaks are square GEMMs (n x n @ n x n) timed on the runtimes graft-edge ships with, best of the calls:
  fp32  torch.mm
  bf16  torch.mm in bf16, OpenVINO MatMul compiled with INFERENCE_PRECISION_HINT bf16
  int8  ONNX Runtime MatMulInteger (u8 x s8 -> s32), OpenVINO MatMul quantised by NNCF
The peak of a precision is the best of its runtimes. Measuring takes ~10-30 s, so results are cached per
machine (CPU model, thread count, runtime versions) in `peaks_cache_path()`; `bench --peaks` and
`frontier --peaks` measure when the cache has no entry, otherwise reports carry the cached peaks or none.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from graft_edge.artefact.versions import software_versions
from graft_edge.cpu import cpu_model, has_bf16
from graft_edge.errors import one_line
from graft_edge.fileio import write_json
from graft_edge.model.flops import model_flops_per_sample
from graft_edge.profile.flops import matmul_gflops

PEAK_PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_N = 2048
DEFAULT_SECONDS = 2.0


def peaks_cache_path() -> Path:
    """$GRAFT_EDGE_CACHE or $XDG_CACHE_HOME/graft-edge (default ~/.cache/graft-edge) / gemm_peaks.json."""
    root = os.environ.get("GRAFT_EDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graft-edge")
    return Path(root) / "gemm_peaks.json"


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


def _best_rate(call: Callable[[], Any], flops: float, seconds: float) -> float:
    """Best GFLOP/s of repeated `call()`s for `seconds` (at least 3 calls, one untimed first)."""
    call()
    best, start, calls = float("inf"), time.perf_counter(), 0
    while time.perf_counter() - start < seconds or calls < 3:
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return flops / best / 1e9


def ort_int8_gemm(n: int, seconds: float, threads: int | None) -> float:
    """GOP/s of ONNX Runtime MatMulInteger, u8 activations x s8 weights (the kernel of dynamic INT8)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(),
                                opts, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    return _best_rate(lambda: sess.run(None, {"a": a}), 2.0 * n ** 3, seconds)


def openvino_gemm(precision: str, n: int, seconds: float, threads: int | None) -> float:
    """GFLOP/s of an OpenVINO MatMul: fp32 / bf16 by the precision hint, int8 as NNCF quantises it."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    model = ov.Model([ops.matmul(a, ops.constant(rng.standard_normal((n, n), dtype=np.float32)), False, True)], [a])
    x = rng.standard_normal((n, n), dtype=np.float32)
    if precision == "int8":
        import nncf

        model = nncf.quantize(model, nncf.Dataset([x]), subset_size=1)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                              "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    return _best_rate(lambda: request.infer({0: x}), 2.0 * n ** 3, seconds)


def measure_peaks(threads: int | None = None, n: int = DEFAULT_N, seconds: float = DEFAULT_SECONDS) -> dict[str, Any]:
    """{"fp32"|"bf16"|"int8": {"gflops": best of its runtimes, "by_runtime": {...}}, "n", "threads", ...}."""
    runs: dict[str, dict[str, Any]] = {p: {} for p in PEAK_PRECISIONS}
    jobs: list[tuple[str, str, Callable[[], float]]] = [
        ("fp32", "torch", lambda: matmul_gflops("fp32", n=n, seconds=seconds, threads=threads)["gflops_best"]),
        ("fp32", "openvino", lambda: openvino_gemm("fp32", n, seconds, threads)),
        ("int8", "onnxruntime", lambda: ort_int8_gemm(n, seconds, threads)),
        ("int8", "openvino", lambda: openvino_gemm("int8", n, seconds, threads))]
    if has_bf16():  # emulated bf16 is no peak worth quoting
        jobs += [("bf16", "torch", lambda: matmul_gflops("bf16", n=n, seconds=seconds, threads=threads)["gflops_best"]),
                 ("bf16", "openvino", lambda: openvino_gemm("bf16", n, seconds, threads))]
    for precision, runtime, job in jobs:
        try:
            runs[precision][runtime] = round(job(), 1)
        except Exception as exc:  # a missing runtime leaves its entry out, with why
            runs[precision][runtime] = f"error: {one_line(exc)}"
    out: dict[str, Any] = {"n": n, "threads": threads, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "loadavg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    for precision, by_runtime in runs.items():
        rates = [v for v in by_runtime.values() if isinstance(v, float)]
        out[precision] = {"gflops": max(rates) if rates else None, "by_runtime": by_runtime}
    return out


def machine_peaks(threads: int | None = None, measure: bool = False, cache: Path | None = None) -> dict[str, Any] | None:
    """This machine's cached peaks for `threads`; measured (and cached) when missing and `measure`; else None."""
    path = cache or peaks_cache_path()
    key = _cache_key(threads)
    try:
        entries = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    if key in entries or not measure:
        return entries.get(key)
    entries[key] = measure_peaks(threads)
    try:
        write_json(path, entries)
    except OSError:  # an unwritable cache only costs a re-measurement next time
        pass
    return entries[key]


def roofline(flops_per_sample: float | None, ms_per_sample: float | None, precision: str | None,
             peaks: dict[str, Any] | None) -> dict[str, Any]:
    """{gflop_per_sample, achieved_gflops, peak_precision, peak_gflops, share_of_peak} (None where unknown)."""
    achieved = flops_per_sample / (ms_per_sample / 1000.0) / 1e9 if flops_per_sample and ms_per_sample else None
    key = peak_precision(precision)
    peak = ((peaks or {}).get(key) or {}).get("gflops") if key else None
    return {"gflop_per_sample": flops_per_sample / 1e9 if flops_per_sample else None, "achieved_gflops": achieved,
            "peak_precision": key, "peak_gflops": peak,
            "share_of_peak": achieved / peak if achieved is not None and peak else None}


def embedder_flops(embedder: Any) -> int | None:
    """FLOPs per sample of what an Embedder runs: counted on a live model, else from the artefact's metadata."""
    inner = getattr(embedder, "inner", embedder)  # a SubsetEmbedder (--modalities) wraps the runtime's embedder
    model = getattr(inner, "model", None)
    if model is not None and hasattr(model, "cfg"):
        return model_flops_per_sample(model)
    value = embedder.info.extra.get("flops_per_sample")
    return int(value) if value else None
