"""ReID ranking metrics under the Market-1501 protocol: mAP and the CMC curve; k-reciprocal re-ranking re-exported."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from graft_edge.errors import GraftError
from graft_edge.retrieval.rerank import RerankConfig, rerank, rerank_features

__all__ = ["RankResult", "RerankConfig", "evaluate_rank", "pairwise_distance", "rerank", "rerank_features"]


class RankResult(NamedTuple):
    """mAP and CMC as fractions in [0, 1]; queries without a valid match are skipped and counted."""

    mAP: float
    cmc: np.ndarray  # (max_rank,) CMC[k] = fraction of queries with a match within the top k+1
    num_valid: int
    num_skipped: int

    def summary(self) -> dict[str, float]:
        """mAP and R1/R5/R10 as plain floats."""
        r = lambda k: float(self.cmc[min(k, len(self.cmc)) - 1]) if len(self.cmc) else 0.0  # noqa: E731
        return {"mAP": float(self.mAP), "R1": r(1), "R5": r(5), "R10": r(10)}


def evaluate_rank(
    distmat: np.ndarray,
    query_ids: np.ndarray,
    gallery_ids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    max_rank: int = 50,
) -> RankResult:
    """Market-1501 evaluation: per query, drop gallery entries with the same id AND camera.

    Ties in distance are broken by gallery order (stable sort), as in the reference code.
    """
    distmat = np.asarray(distmat, dtype=np.float64)
    q_ids, g_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    q_cams, g_cams = np.asarray(query_cams), np.asarray(gallery_cams)
    num_q, num_g = distmat.shape
    if (len(q_ids), len(g_ids)) != (num_q, num_g) or len(q_cams) != num_q or len(g_cams) != num_g:
        raise ValueError(f"distmat {distmat.shape} does not match ids/cams lengths")
    max_rank = min(max_rank, num_g)
    order = np.argsort(distmat, axis=1, kind="stable")  # (Q, G)
    matches = g_ids[order] == q_ids[:, None]  # (Q, G)
    cmc_sum = np.zeros(max_rank)
    aps: list[float] = []
    skipped = 0
    for i in range(num_q):
        keep = ~((g_ids[order[i]] == q_ids[i]) & (g_cams[order[i]] == q_cams[i]))
        hits = matches[i][keep]
        if not hits.any():
            skipped += 1
            continue
        cmc = hits.cumsum()
        cmc[cmc > 1] = 1
        cmc_sum += cmc[:max_rank] if len(cmc) >= max_rank else np.pad(cmc, (0, max_rank - len(cmc)), mode="edge")
        ranks = np.flatnonzero(hits) + 1.0  # 1-based positions of the true matches
        precision = np.arange(1, len(ranks) + 1) / ranks
        aps.append(float(precision.mean()))
    valid = num_q - skipped
    if valid == 0:
        raise GraftError(f"no query has a valid match in the gallery (all {num_q} need a gallery image of their id "
                         "from another camera): mAP is undefined; check the query/gallery split and camera ids")
    return RankResult(float(np.mean(aps)), cmc_sum / valid, valid, skipped)


def pairwise_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Euclidean distance between L2-normalised features (equivalent to cosine ranking)."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    d2 = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
    return np.sqrt(np.clip(d2, 0.0, None))
