"""The classic k-reciprocal re-ranking, one Python loop per image: the yardstick for `graft_edge.retrieval.metrics.rerank`.

Written from Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding" (CVPR 2017),
following the distance-matrix form the ReID toolboxes ship (`re_ranking(q_g, q_q, g_g, k1, k2, lambda)`):
dense (Q+G)^2 matrices, a full argsort, and per-image loops for the reciprocal sets, the expansion, the
query expansion and the Jaccard distance. Kept deliberately plain; used by the agreement tests and by
benchmarks/rerank_speed.py.
"""
from __future__ import annotations

import numpy as np


def k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Images j among i's k+1 nearest that also have i among their k+1 nearest."""
    forward = initial_rank[i, :k + 1]
    backward = initial_rank[forward, :k + 1]
    return forward[np.where(backward == i)[0]]


def reference_rerank(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray,
                     k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked query x gallery distances, computed image by image."""
    num_q = q_g.shape[0]
    full = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    full = np.square(full).astype(np.float32)
    full = np.transpose(full / np.max(full, axis=0))  # each row divided by its largest distance
    n = full.shape[0]
    initial_rank = np.argsort(full, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))

    v = np.zeros_like(full)
    for i in range(n):
        recip = k_reciprocal(initial_rank, i, k1)
        expansion = recip
        for candidate in recip:
            cand_recip = k_reciprocal(initial_rank, candidate, half)
            if len(np.intersect1d(cand_recip, recip)) > 2.0 / 3.0 * len(cand_recip):
                expansion = np.append(expansion, cand_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-full[i, expansion])
        v[i, expansion] = weight / np.sum(weight)

    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = np.mean(v[initial_rank[i, :k2]], axis=0)
        v = v_qe

    inv_index = [np.where(v[:, j] != 0)[0] for j in range(n)]
    jaccard = np.zeros((num_q, n), dtype=np.float32)
    for i in range(num_q):
        shared = np.zeros(n, dtype=np.float32)
        nonzero = np.where(v[i] != 0)[0]
        for j in nonzero:
            images = inv_index[j]
            shared[images] += np.minimum(v[i, j], v[images, j])
        jaccard[i] = 1.0 - shared / (2.0 - shared)

    final = jaccard * (1.0 - lambda_value) + full[:num_q] * lambda_value
    return final[:, num_q:]


def clustered_problem(num_query: int, num_gallery: int, ids: int, dim: int = 64, noise: float = 0.8,
                      cameras: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ReID-like features: identities are Gaussian clusters, queries and gallery drawn from them.

    Returns query/gallery features (float32), ids and cameras; the noise sets how much clusters overlap.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, dim)).astype(np.float32)
    qi, gi = rng.integers(0, ids, num_query), rng.integers(0, ids, num_gallery)
    qf = centers[qi] + noise * rng.normal(size=(num_query, dim)).astype(np.float32)
    gf = centers[gi] + noise * rng.normal(size=(num_gallery, dim)).astype(np.float32)
    return {"qf": qf, "gf": gf, "qi": qi, "gi": gi,
            "qc": rng.integers(0, cameras, num_query), "gc": rng.integers(0, cameras, num_gallery)}
