"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with sparse matrices instead of a loop per image.

Same algorithm and distance-matrix interface as the ReID toolboxes' `re_ranking(q_g, q_q, g_g)`: the
squared distances over queries + gallery are row-normalised, each image's k-reciprocal set (expanded by
its candidates' k/2-reciprocal sets) becomes a sparse weight vector, local query expansion averages the
vectors of the k2 nearest neighbours, and the Jaccard distance between vectors is blended with the
original distance. Only the top-(k1+1) neighbours of each row and a few thousand rows of distances at a
time are held, so the cost grows with N*k, not N^2 memory (beyond the dense query x gallery output).
Depends on numpy/scipy only, so `graft_edge.retrieval.metrics` can re-export it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

CHUNK_BYTES = 256 << 20  # working memory of one block of dense distance rows


@dataclass(frozen=True)
class RerankConfig:
    """k-reciprocal parameters: k1 (reciprocal neighbours), k2 (query expansion), lambda (weight of the original)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


class DistanceSource(Protocol):
    """The (Q+G) x (Q+G) squared-distance matrix over queries then gallery, read a block of rows at a time."""

    num_query: int
    num_total: int

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Squared distances of rows start..stop to all Q+G images: float32 (stop - start, Q+G)."""
        ...

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Squared distances of the pairs (i[n], j[n]): float32 (n,)."""
        ...


class MatrixSource:
    """Squared distances from the three blocks the toolboxes take: q_g (Q, G), q_q (Q, Q), g_g (G, G)."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.q_g, self.q_q, self.g_g = (np.asarray(m, dtype=np.float32) for m in (q_g, q_q, g_g))
        q, g = self.q_g.shape
        if self.q_q.shape != (q, q) or self.g_g.shape != (g, g):
            raise ValueError(f"rerank: q_g {self.q_g.shape} needs q_q ({q}, {q}) and g_g ({g}, {g}), "
                             f"got {self.q_q.shape} and {self.g_g.shape}")
        self.num_query, self.num_total = q, q + g

    def rows(self, start: int, stop: int) -> np.ndarray:
        q = self.num_query
        parts = []
        if start < q:
            s = min(stop, q)
            parts.append(np.hstack([self.q_q[start:s], self.q_g[start:s]]))
        if stop > q:
            s = max(start, q)
            parts.append(np.hstack([self.q_g[:, s - q:stop - q].T, self.g_g[s - q:stop - q]]))
        return np.square(np.vstack(parts))

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        q = self.num_query
        out = np.empty(len(i), dtype=np.float32)
        for iq in (True, False):
            for jq in (True, False):
                sel = ((i < q) == iq) & ((j < q) == jq)
                a, b = i[sel] - (0 if iq else q), j[sel] - (0 if jq else q)
                block = self.q_q if iq and jq else self.g_g if not (iq or jq) else self.q_g
                out[sel] = block[a, b] if iq or not jq else block[b, a]
        return np.square(out)


class FeatureSource:
    """Squared Euclidean distances of L2-normalised features, computed on demand (no G x G matrix)."""

    def __init__(self, query: np.ndarray, gallery: np.ndarray) -> None:
        feats = np.vstack([np.asarray(query, dtype=np.float32), np.asarray(gallery, dtype=np.float32)])
        self.feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        self.num_query, self.num_total = len(query), len(feats)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.clip(2.0 - 2.0 * self.feats[start:stop] @ self.feats.T, 0.0, None)

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.empty(len(i), dtype=np.float32)
        step = max(1, CHUNK_BYTES // (8 * self.feats.shape[1]))
        for s in range(0, len(i), step):
            a, b = self.feats[i[s:s + step]], self.feats[j[s:s + step]]
            out[s:s + step] = np.clip(2.0 - 2.0 * np.einsum("nd,nd->n", a, b), 0.0, None)
        return out


def rerank(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray,
           k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked query x gallery distances (float32 (Q, G)) from the three distance blocks, as the toolboxes do."""
    return rerank_source(MatrixSource(q_g_dist, q_q_dist, g_g_dist), k1, k2, lambda_value)


def rerank_features(query: np.ndarray, gallery: np.ndarray,
                    k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """`rerank` on the Euclidean distances of L2-normalised features, never forming the G x G matrix."""
    return rerank_source(FeatureSource(query, gallery), k1, k2, lambda_value)


def rerank_source(src: DistanceSource, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking over any DistanceSource; see the module docstring for the steps."""
    n = src.num_total
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"rerank: need k1 >= 1, k2 >= 1 and 0 <= lambda <= 1 (got {k1}, {k2}, {lambda_value})")
    if src.num_query < 1 or n - src.num_query < 1:
        raise ValueError("rerank: need at least one query and one gallery image")
    k = min(k1 + 1, n)
    ranks, row_max = _top_neighbours(src, min(max(k, k2), n))
    recip = _reciprocal(ranks[:, :k])
    half = _reciprocal(ranks[:, :min(int(np.around(k1 / 2.0)) + 1, n)])
    expanded = _expand(recip, half)
    v = _weights(src, expanded, row_max)
    if k2 != 1:
        v = _neighbour_mean(ranks[:, :k2], n) @ v
    return _blend(src, v.tocsr(), row_max, lambda_value)


def _top_neighbours(src: DistanceSource, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest images in order (int64 (N, k)) and its largest squared distance (N,)."""
    n = src.num_total
    ranks = np.empty((n, k), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float32)
    step = max(1, CHUNK_BYTES // (4 * n))
    for start in range(0, n, step):
        d = src.rows(start, min(start + step, n))
        row_max[start:start + len(d)] = d.max(axis=1)
        top = np.argpartition(d, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), d.shape)
        top_d = np.take_along_axis(d, top, axis=1)
        order = np.lexsort((top, top_d), axis=1)  # by distance, ties by index
        ranks[start:start + len(d)] = np.take_along_axis(top, order, axis=1)
    return ranks, np.maximum(row_max, np.finfo(np.float32).tiny)


def _membership(ranks: np.ndarray) -> sp.csr_matrix:
    """Sparse 0/1 matrix with row i marking the images in ranks[i]."""
    n, k = ranks.shape
    data = np.ones(n * k, dtype=np.float32)
    return sp.csr_matrix((data, ranks.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def _reciprocal(ranks: np.ndarray) -> sp.csr_matrix:
    """R[i, j] = 1 when j is among i's neighbours and i among j's (the k-reciprocal sets)."""
    a = _membership(ranks)
    return a.multiply(a.T).tocsr()


def _expand(recip: sp.csr_matrix, half: sp.csr_matrix) -> sp.csr_matrix:
    """Add to R(i) the k/2-reciprocal set of each candidate c in R(i) sharing more than 2/3 of it with R(i)."""
    overlap = (recip @ half.T).multiply(recip).tocoo()  # |R(i) & R_half(c)| for c in R(i)
    sizes = np.asarray(half.sum(axis=1)).ravel()
    keep = overlap.data > (2.0 / 3.0) * sizes[overlap.col]
    n = recip.shape[0]
    accepted = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (overlap.row[keep], overlap.col[keep])),
                             shape=(n, n))
    union = recip + accepted @ half
    union.data[:] = 1.0
    union.eliminate_zeros()
    return union.tocsr()


def _weights(src: DistanceSource, expanded: sp.csr_matrix, row_max: np.ndarray) -> sp.csr_matrix:
    """V[i, j] = exp(-d(i, j)) over i's expanded set, normalised to sum 1 per row."""
    coo = expanded.tocoo()
    dist = src.pairs(coo.row.astype(np.int64), coo.col.astype(np.int64)) / row_max[coo.row]
    w = np.exp(-dist.astype(np.float64))
    w /= np.bincount(coo.row, weights=w, minlength=expanded.shape[0])[coo.row]
    return sp.csr_matrix((w, (coo.row, coo.col)), shape=expanded.shape)


def _neighbour_mean(ranks: np.ndarray, n: int) -> sp.csr_matrix:
    """Averaging operator: row i holds 1/k2 at each of i's k2 nearest images (local query expansion)."""
    m = _membership(ranks)
    m.data[:] = 1.0 / ranks.shape[1]
    return m


def _blend(src: DistanceSource, v: sp.csr_matrix, row_max: np.ndarray, lambda_value: float) -> np.ndarray:
    """(1 - lambda) * Jaccard(V_q, V_g) + lambda * normalised original distance, query x gallery."""
    q, n = src.num_query, src.num_total
    g = n - q
    gallery_cols = v[q:].tocsc()  # gallery vectors, indexed by the image they weight
    out = np.empty((q, g), dtype=np.float32)
    for start, stop in _row_chunks(v[:q], np.diff(gallery_cols.indptr), g):
        shared = _sum_of_minima(v[start:stop].tocoo(), gallery_cols, g)
        jaccard = 1.0 - shared / (2.0 - shared)
        original = src.rows(start, stop)[:, q:] / row_max[start:stop, None]
        out[start:stop] = (1.0 - lambda_value) * jaccard + lambda_value * original
    return out


def _row_chunks(rows: sp.csr_matrix, col_nnz: np.ndarray, g: int) -> list[tuple[int, int]]:
    """Query row ranges whose dense output and (row nonzero x gallery nonzero) pair lists fit CHUNK_BYTES."""
    csum = np.concatenate([[0], np.cumsum(col_nnz[rows.indices], dtype=np.int64)])
    pairs = csum[rows.indptr[1:]] - csum[rows.indptr[:-1]]
    cost = 8 * g + 40 * pairs  # dense output row + ~5 arrays of 8 bytes per pair
    chunks, start, acc = [], 0, 0
    for i, c in enumerate(cost):
        if acc + c > CHUNK_BYTES and i > start:
            chunks.append((start, i))
            start, acc = i, 0
        acc += c
    chunks.append((start, rows.shape[0]))
    return chunks


def _sum_of_minima(rows: sp.coo_matrix, cols: sp.csc_matrix, g: int) -> np.ndarray:
    """S[i, j] = sum_k min(rows[i, k], cols[j, k]) for every row i and gallery image j (dense (r, g))."""
    lens = np.diff(cols.indptr)[rows.col]
    starts = cols.indptr[rows.col]
    total = int(lens.sum())
    offsets = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)  # ragged ranges
    mins = np.minimum(np.repeat(rows.data, lens), cols.data[offsets])
    flat = np.repeat(rows.row.astype(np.int64), lens) * g + cols.indices[offsets]
    return np.bincount(flat, weights=mins, minlength=rows.shape[0] * g).reshape(rows.shape[0], g)
