"""FLOPs of a model's inference pass and this machine's measured GEMM rate (a roofline-style yardstick).

`latency as % of peak` = achieved FLOP/s (model FLOPs / latency) / measured matmul FLOP/s: how much of the
CPU's dense-GEMM capability a runtime extracts.  Counting sums the model's GEMMs (graft_edge.model.gemm_shapes:
Linear layers, convolutions, both products of attention; element-wise ops are not counted), a lower bound on work.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from graft_edge.errors import GraftError
from graft_edge.model.flops import count_flops, model_flops_per_sample

__all__ = ["count_flops", "model_flops_per_sample", "matmul_gflops", "share_of_peak"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(dtype: str = "fp32", n: int = 2048, seconds: float = 2.0, threads: int | None = None) -> dict[str, Any]:
    """Measured square-GEMM rate (n x n @ n x n) in GFLOP/s: best and median over repeated calls."""
    if dtype not in _DTYPES:
        raise GraftError(f"dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    if threads:
        torch.set_num_threads(threads)
    dt = _DTYPES[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dt)
    b = torch.randn(n, n, generator=g).to(dt)
    flops = 2.0 * n ** 3
    torch.mm(a, b)  # warm-up (thread pool, kernel selection)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"dtype": dtype, "n": n, "calls": len(times), "threads": torch.get_num_threads(),
            "gflops_best": flops / times[0] / 1e9, "gflops_median": flops / times[len(times) // 2] / 1e9}


def share_of_peak(flops_per_sample: float, ms_per_sample: float, peak_gflops: float) -> float:
    """Achieved fraction of the measured GEMM peak: (FLOPs / latency) / peak."""
    if ms_per_sample <= 0 or peak_gflops <= 0:
        return float("nan")
    return flops_per_sample / (ms_per_sample / 1000.0) / (peak_gflops * 1e9)
