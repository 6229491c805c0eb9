"""Measurement: latency statistics, telemetry (RSS, NVML power/energy), hardware records, bench, frontier, demo.

    from graft_edge.profile import BenchSettings, bench_models, validate_bench_result
    report = bench_models(["best.pt", "model.onnx"], BenchSettings(batches=(1, 32), iters=50))

    from graft_edge.profile import FrontierSettings, run_frontier
    result = run_frontier("best.pt", "data/", "frontier/", FrontierSettings(targets=("70%", "45%"), batch=64))

Modules: stats (percentile, summarize), latency (time_embedder, interleaved_latency), telemetry
(MemorySampler, GpuMonitor), hardware (machine_info), flops (count_flops, matmul_gflops), bench,
frontier, report (csv/json/md/png, Pareto), demo.  Names are imported lazily (no torch at import).
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "percentile": "stats", "summarize": "stats", "LatencyStats": "stats",
    "time_embedder": "latency", "interleaved_latency": "latency", "synthetic_batch": "latency", "warm_up": "latency",
    "MemorySampler": "telemetry", "GpuMonitor": "telemetry",
    "machine_info": "hardware", "software_versions": "hardware",
    "count_flops": "flops", "model_flops_per_sample": "flops", "matmul_gflops": "flops", "share_of_peak": "flops",
    "BenchSettings": "bench", "bench_model": "bench", "bench_models": "bench", "validate_bench_result": "bench",
    "any_failed": "bench", "size_on_disk": "bench", "model_files": "bench",
    "FrontierSettings": "frontier", "FrontierResult": "frontier", "run_frontier": "frontier",
    "parse_formats": "frontier", "FORMATS": "frontier",
    "pareto_front": "report", "markdown_table": "report", "write_plot": "report",
    "DemoSettings": "demo", "run_demo": "demo",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"graft_edge.profile.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'graft_edge.profile' has no attribute {name!r}")
