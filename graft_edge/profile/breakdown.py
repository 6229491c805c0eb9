"""Where an artefact's time goes: time per op type and GEMM vs non-GEMM work, from each runtime's own profiler.

    torch        torch.profiler: self CPU time of every aten op; the calls are wrapped in one record_function whose
                 own self time is the Python / dispatch time between ops ("framework")
    onnxruntime  session profiling (SessionOptions.enable_profiling): every node's kernel time; each model_run event
                 minus its nodes is the executor's own time ("framework")
    openvino     performance counters (PERF_COUNT): every executed node's time, by the node type OpenVINO runs (its
                 fused attention subgraphs, the ones holding a Softmax, count as attention)

Groups: "gemm" (matrix products: Linear / MatMul / FullyConnected, quantised ones, convolutions), "attention" (fused
attention kernels, their products included), "other" (normalisation, element-wise, data movement) and "framework".
Per call: `profiled_ms` is what the profiler accounts for (the groups' sum), `profiled_wall_ms` the wall time of those
same profiled calls (a breakdown that explains the time has `coverage` = profiled / profiled wall close to 1) and
`measured_ms` the median wall time of unprofiled calls of the same input (`overhead` = profiled wall / measured: what
profiling itself costs; the shares stay meaningful while it is small).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from graft_edge.errors import GraftError
from graft_edge.profile.latency import bound_call, synthetic_batch

GROUPS = ("gemm", "attention", "other", "framework")
_GEMM = {
    "torch": {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
              "aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
              "aten::_weight_int8pack_mm", "aten::_int_mm"},
    "onnx": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm", "Conv", "FusedConv", "QLinearConv", "ConvInteger",
             "MatMulNBits"},
    "openvino": {"FullyConnected", "FullyConnectedQuantized", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution",
                 "GroupConvolution", "Deconvolution"},
}
_ATTENTION = {
    "torch": {"aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_attention_math", "aten::_native_multi_head_attention",
              "aten::_transformer_encoder_layer_fwd"},
    "onnx": {"Attention", "MultiHeadAttention", "QAttention", "GroupQueryAttention"},
    "openvino": {"ScaledDotProductAttention", "MHA"},
}
WRAPPER = "graft_edge::call"  # the record_function around each profiled torch call


def group_of(runtime: str, op: str) -> str:
    """'gemm' | 'attention' | 'other' for an op type as `runtime`'s profiler names it."""
    if op in _GEMM.get(runtime, ()):
        return "gemm"
    if op in _ATTENTION.get(runtime, ()):
        return "attention"
    return "other"


def _median_wall_ms(call: Callable[[], Any], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


Collected = tuple[dict[str, list[float]], float, float]  # ({op: [total ms, occurrences]}, framework ms, wall ms)


def _timed(call: Callable[[], Any]) -> float:
    """Wall ms of one call."""
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000.0


def _torch_ops(embedder: Any, inputs: Mapping[str, np.ndarray], calls: int, threads: int | None) -> Collected:
    """Self ms of every aten op over `calls` profiled calls, the wrapper's own ms, and the calls' wall ms."""
    from torch.profiler import ProfilerActivity, profile, record_function

    call = bound_call(embedder, inputs)
    call()

    def wrapped() -> None:
        with record_function(WRAPPER):
            call()

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = sum(_timed(wrapped) for _ in range(calls))
    ops: dict[str, list[float]] = {}
    framework = 0.0
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1000.0
        if e.key == WRAPPER:
            framework += ms
        elif ms > 0 or e.count:
            ops[e.key] = [ms, float(e.count)]
    return ops, framework, wall


def _ort_ops(embedder: Any, inputs: Mapping[str, np.ndarray], calls: int, threads: int | None) -> Collected:
    """Node kernel times by op type over the last `calls` runs of a profiling session, and the executor's own ms."""
    import onnxruntime as ort

    from graft_edge.runtime.onnx_backend import session_options
    from graft_edge.runtime.presence import presence_feeds

    info = embedder.info
    feeds = presence_feeds(inputs, info.modalities, info.img_size, embedder.presence_input, embedder.path.name)
    with tempfile.TemporaryDirectory(prefix="graft-ort-profile-") as tmp:
        opts = session_options(threads)
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(embedder.path), opts, providers=["CPUExecutionProvider"])
        io = session.io_binding()  # inputs bound once, as the timed calls do: the wall is the run itself
        for name, arr in feeds.items():
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
        io.bind_output(session.get_outputs()[0].name)
        session.run_with_iobinding(io)
        wall = sum(_timed(lambda: session.run_with_iobinding(io)) for _ in range(calls))
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-calls:]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    ops: dict[str, list[float]] = {}
    in_nodes = 0.0
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if not any(lo <= e["ts"] <= hi for lo, hi in windows):
            continue
        op = e.get("args", {}).get("op_name", "?")
        rec = ops.setdefault(op, [0.0, 0.0])
        rec[0] += e["dur"] / 1000.0
        rec[1] += 1
        in_nodes += e["dur"] / 1000.0
    return ops, sum(e["dur"] for e in runs) / 1000.0 - in_nodes, wall


def _attention_subgraphs(compiled: Any) -> set[str]:
    """Names of OpenVINO's fused subgraphs that hold a Softmax (its attention kernels)."""
    names = set()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        fused = str(rt["originalLayersNames"].astype(str)) if "originalLayersNames" in rt else ""
        if "Softmax" in fused or "scaled_dot_product" in fused:
            names.add(op.get_friendly_name())
    return names


def _ov_ops(embedder: Any, inputs: Mapping[str, np.ndarray], calls: int, threads: int | None) -> Collected:
    """Executed node times by node type over `calls` requests (counters are averages since compile: differenced)."""
    from graft_edge.runtime.openvino_backend import compile_ir
    from graft_edge.runtime.presence import presence_feeds

    info = embedder.info
    compiled = compile_ir(embedder.path, str(info.extra.get("precision")), threads, profile=True)
    attention = _attention_subgraphs(compiled)
    request = compiled.create_infer_request()
    feeds = presence_feeds(inputs, info.modalities, info.img_size, embedder.presence_input, embedder.path.name)

    def totals(n: int) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for p in request.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                kind = "Attention subgraph" if p.node_name in attention else p.node_type
                out[(p.node_name, kind)] = p.real_time.total_seconds() * 1000.0 * n
        return out

    warm = 2
    for _ in range(warm):
        request.infer(feeds)
    before = totals(warm)
    wall = sum(_timed(lambda: request.infer(feeds)) for _ in range(calls))
    after = totals(warm + calls)
    ops: dict[str, list[float]] = {}
    for (name, kind), ms in after.items():
        rec = ops.setdefault(kind, [0.0, 0.0])
        rec[0] += max(0.0, ms - before.get((name, kind), 0.0))
        rec[1] += calls
    return ops, 0.0, wall


PROFILERS = {"torch": ("torch.profiler", _torch_ops), "onnx": ("onnxruntime session profiling", _ort_ops),
             "openvino": ("openvino performance counters", _ov_ops)}


def profile_run(embedder: Any, path: str | Path, batch: int, threads: int | None = None, dtype: str = "fp32",
                calls: int = 5) -> dict[str, Any]:
    """The time breakdown of one (artefact, batch): per-call ms by op type and group, and the measured time."""
    emb = getattr(embedder, "inner", embedder)  # a SubsetEmbedder (--modalities) wraps the runtime's embedder
    runtime = emb.info.format
    if runtime not in PROFILERS:
        raise GraftError(f"--profile: no profiler for {runtime} artefacts ({Path(path).name})")
    profiler, collect = PROFILERS[runtime]
    inputs = synthetic_batch(emb.info, batch)
    call = bound_call(emb, inputs)
    call()
    measured = _median_wall_ms(call, calls)
    ops, framework, wall = collect(emb, inputs, calls, threads)
    rows = sorted(({"op": op, "group": group_of(runtime, op) if op != "Attention subgraph" else "attention",
                    "ms": total / calls, "per_call": count / calls} for op, (total, count) in ops.items()),
                  key=lambda r: -r["ms"])
    rows = [r for r in rows if r["ms"] > 0]
    groups = {g: sum(r["ms"] for r in rows if r["group"] == g) for g in GROUPS[:3]}
    groups["framework"] = max(0.0, framework / calls)
    profiled = sum(groups.values())
    for r in rows:
        r["share"] = r["ms"] / profiled if profiled else None
    wall /= calls
    return {"runtime": runtime, "profiler": profiler, "batch": batch, "calls": calls, "measured_ms": measured,
            "profiled_wall_ms": wall, "profiled_ms": profiled, "coverage": profiled / wall if wall else None,
            "overhead": wall / measured if measured else None, "groups": groups, "ops": rows}


def check_breakdown(rec: Any, where: str) -> None:
    """GraftError naming the first field of a breakdown record (profile_run's) that is missing or wrong."""
    if not isinstance(rec, dict):
        raise GraftError(f"bench JSON: {where} must be an object")
    for key in ("measured_ms", "profiled_wall_ms", "profiled_ms"):
        if not isinstance(rec.get(key), (int, float)) or not rec[key] >= 0:
            raise GraftError(f"bench JSON: {where}.{key} must be a number >= 0")
    groups = rec.get("groups")
    if not isinstance(groups, dict) or set(groups) != set(GROUPS):
        raise GraftError(f"bench JSON: {where}.groups must hold {', '.join(GROUPS)}")
    if not isinstance(rec.get("ops"), list):
        raise GraftError(f"bench JSON: {where}.ops must be a list")
