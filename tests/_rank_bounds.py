"""What a bounded distance error can do to ranking metrics (imported by the tests of reduced-precision evaluation).

A reduced precision (INT8, FP16, bf16) moves every query-gallery distance by at most some shift s. Pairs whose
FP32 distances are further apart than 2 s keep their order whatever the error's direction; closer pairs may swap.
So the reduced-precision mAP / CMC lie between the metrics of two FP32-based extremes: every true match pushed
s further away and every other gallery image s closer (the worst order possible), and the reverse (the best).
Unlike "the metrics are equal", this holds on any CPU: it does not depend on which way the rounding went.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from graft_edge.evaluation import SplitFeatures, embed_splits
from graft_edge.retrieval.metrics import evaluate_rank, pairwise_distance

KEYS = ("mAP", "R1", "R5", "R10")


def distances(embedder: Any, data_root: Any, batch_size: int = 4) -> tuple[np.ndarray, SplitFeatures, SplitFeatures]:
    """Query x gallery distances of an embedder on ROOT's test split, and the two splits (ids, cameras)."""
    query, gallery = embed_splits(embedder, data_root, batch_size=batch_size)
    return pairwise_distance(query.feats, gallery.feats), query, gallery


def metric_bounds(dist: np.ndarray, shift: float, query: SplitFeatures, gallery: SplitFeatures) -> dict[str, tuple]:
    """{metric: (lowest, highest)} reachable when every distance of `dist` moves by at most `shift`."""
    match = query.ids[:, None] == gallery.ids[None, :]
    step = shift + 1e-9 + 1e-6 * float(np.abs(dist).max())  # strictly past any tie the real error could make
    worst = evaluate_rank(dist + np.where(match, step, -step), query.ids, gallery.ids, query.cams, gallery.cams)
    best = evaluate_rank(dist - np.where(match, step, -step), query.ids, gallery.ids, query.cams, gallery.cams)
    lo, hi = worst.summary(), best.summary()
    return {k: (lo[k], hi[k]) for k in KEYS}


def assert_within(metrics: dict[str, Any], bounds: dict[str, tuple], what: str) -> None:
    """Every metric of `metrics` inside its (lowest, highest) bound."""
    for k, (lo, hi) in bounds.items():
        assert lo - 1e-9 <= metrics[k] <= hi + 1e-9, (what, k, metrics[k], (lo, hi))
