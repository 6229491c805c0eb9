"""Measurement only: latency statistics, telemetry (RSS, NVML power/energy), hardware records, FLOPs, bench, reports.

    from graft_edge.profile import BenchSettings, bench_models, validate_bench_result
    report = bench_models(["best.pt", "model.onnx"], BenchSettings(batches=(1, 32), iters=50))

Modules: stats (percentile, summarize), latency (time_embedder, interleaved_latency), telemetry
(MemorySampler, GpuMonitor), hardware (machine_info), flops (count_flops, matmul_gflops), gemm_timers (one GEMM
shape on one runtime), peaks (shape-true and square GEMM peaks, the roofline), breakdown (time per op type from
each runtime's profiler), bench, report (csv/json/md/png, Pareto), progress (hooks). Multi-stage recipes that use these (frontier,
demo, the prune run) live in graft_edge.workflows.
"""
from graft_edge.profile.bench import BenchSettings, any_failed, bench_model, bench_models, validate_bench_result
from graft_edge.profile.hardware import machine_info, software_versions
from graft_edge.profile.latency import interleaved_latency, synthetic_batch, time_embedder, warm_up
from graft_edge.profile.stats import LatencyStats, percentile, summarize

__all__ = ["BenchSettings", "LatencyStats", "any_failed", "bench_model", "bench_models", "interleaved_latency",
           "machine_info", "percentile", "software_versions", "summarize", "synthetic_batch", "time_embedder",
           "validate_bench_result", "warm_up"]
