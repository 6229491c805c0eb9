"""Latency statistics: percentiles by linear interpolation (numpy's default) and a summary record.

Percentile method (documented, tested): for n sorted samples x[0] <= ... <= x[n-1] and q in
[0, 100], the position is h = (n - 1) * q / 100; the result is x[floor(h)] + (h - floor(h)) *
(x[floor(h) + 1] - x[floor(h)]).  This is numpy's `method="linear"` (Hyndman & Fan type 7), so
p50 of [1, 2, 3, 4] is 2.5 and p90 of 1..10 is 9.1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from graft_edge.errors import GraftError


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `samples` by linear interpolation between closest ranks."""
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise GraftError(f"percentile {q!r}: expected a number in [0, 100]")
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise GraftError("percentile of an empty sample")
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@dataclass(frozen=True)
class LatencyStats:
    """Per-batch latency statistics in milliseconds plus derived throughput.

    `per_sample_ms` = p50 / batch; `throughput` = batch * n / sum(latencies) (samples per second,
    from the mean, so it is what a saturated loop sustains).
    """

    batch: int
    n: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    per_sample_ms: float
    throughput: float  # samples / s

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


def summarize(latencies_ms: Sequence[float], batch: int) -> LatencyStats:
    """Summary of per-call latencies (ms) of batches of `batch` samples."""
    xs = [float(x) for x in latencies_ms]
    if not xs:
        raise GraftError("no timed iterations: raise --iters or --seconds")
    if batch < 1:
        raise GraftError(f"batch {batch}: expected a positive integer")
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    p50 = percentile(xs, 50)
    total_s = sum(xs) / 1000.0
    return LatencyStats(
        batch=batch, n=n, mean_ms=mean, std_ms=std, p50_ms=p50, p90_ms=percentile(xs, 90),
        p99_ms=percentile(xs, 99), min_ms=min(xs), max_ms=max(xs), per_sample_ms=p50 / batch,
        throughput=(batch * n / total_s) if total_s > 0 else float("inf"),
    )
