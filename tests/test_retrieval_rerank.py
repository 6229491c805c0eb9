"""k-reciprocal re-ranking: a case checked by hand, agreement with the loop-per-image reference, input checks."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from graft_edge.retrieval.metrics import evaluate_rank, pairwise_distance, rerank, rerank_features

_spec = importlib.util.spec_from_file_location(
    "rerank_reference", Path(__file__).resolve().parents[1] / "benchmarks" / "rerank_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _blocks(points: np.ndarray, num_query: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q_g, q_q, g_g) Euclidean distances of points on a line / plane, queries first."""
    d = np.linalg.norm(points[:, None] - points[None], axis=-1).astype(np.float32)
    return d[:num_query, num_query:], d[:num_query, :num_query], d[num_query:, num_query:]


def test_hand_checked_two_clusters() -> None:
    """1-D points: query 0, gallery 0.1, 0.25 and a far pair 10, 10.1; k1=1, k2=1, lambda=0.5.

    Squared distances are row-normalised by each row's largest; with k1=1 the reciprocal set of i is i
    plus its nearest other image when that one's nearest other is i. R(q0) = R(g0.1) = {q0, g0.1}, so
    their weight vectors share their support; g0.25's nearest (g0.1) prefers q0, so R(g0.25) = {g0.25}
    and, like the far pair, it shares nothing with q0: Jaccard distance 1.
    """
    points = np.array([[0.0], [0.1], [0.25], [10.0], [10.1]])
    q_g, q_q, g_g = _blocks(points, 1)
    out = rerank(q_g, q_q, g_g, k1=1, k2=1, lambda_value=0.5)
    sq = np.square(np.linalg.norm(points[:, None] - points[None], axis=-1))
    norm = sq / sq.max(axis=1, keepdims=True)
    # V(q0) over {q0, g0.1}: exp(-0), exp(-norm[0,1]); V(g0.1) over {q0, g0.1}: exp(-norm[1,0]), exp(0)
    vq = np.exp(-np.array([0.0, norm[0, 1]]))
    vq /= vq.sum()
    vg = np.exp(-np.array([norm[1, 0], 0.0]))
    vg /= vg.sum()
    shared = np.minimum(vq, vg).sum()
    expected_g01 = 0.5 * (1 - shared / (2 - shared)) + 0.5 * norm[0, 1]
    np.testing.assert_allclose(out[0, 0], expected_g01, rtol=1e-5)
    np.testing.assert_allclose(out[0, 1], 0.5 * 1.0 + 0.5 * norm[0, 2], rtol=1e-5)
    np.testing.assert_allclose(out[0, 2:], 0.5 + 0.5 * norm[0, 3:], rtol=1e-5)
    assert np.argsort(out[0]).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("num_query, num_gallery, ids, noise, k1, k2, lam", [
    (40, 200, 12, 1.0, 20, 6, 0.3),
    (60, 300, 30, 1.6, 20, 6, 0.3),
    (30, 150, 10, 1.3, 10, 3, 0.5),
    (25, 120, 8, 1.3, 6, 1, 0.1),
])
def test_agrees_with_reference(num_query, num_gallery, ids, noise, k1, k2, lam) -> None:
    p = reference.clustered_problem(num_query, num_gallery, ids, dim=16, noise=noise, seed=num_query)
    q_g, q_q, g_g = (pairwise_distance(a, b).astype(np.float32)
                     for a, b in ((p["qf"], p["gf"]), (p["qf"], p["qf"]), (p["gf"], p["gf"])))
    ref = reference.reference_rerank(q_g, q_q, g_g, k1, k2, lam)
    got = rerank(q_g, q_q, g_g, k1, k2, lam)
    assert got.shape == (num_query, num_gallery) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert (got.argmin(1) == ref.argmin(1)).mean() >= 0.99
    ev = [evaluate_rank(d, p["qi"], p["gi"], p["qc"], p["gc"]) for d in (q_g, ref, got)]
    assert abs(ev[1].mAP - ev[2].mAP) < 1e-3
    if noise >= 1.3:  # overlapping clusters: re-ranking should help, as in the paper
        assert ev[2].mAP > ev[0].mAP
    np.testing.assert_allclose(rerank_features(p["qf"], p["gf"], k1, k2, lam), got, atol=1e-5)


def test_chunked_rows_give_the_same_result(monkeypatch) -> None:
    """Small working-memory chunks (many row blocks) change nothing."""
    mod = importlib.import_module("graft_edge.retrieval.rerank")

    p = reference.clustered_problem(30, 90, 6, dim=8, noise=1.2, seed=3)
    whole = rerank_features(p["qf"], p["gf"])
    monkeypatch.setattr(mod, "CHUNK_BYTES", 2048)
    np.testing.assert_allclose(rerank_features(p["qf"], p["gf"]), whole, atol=1e-6)


@pytest.mark.parametrize("shapes, kwargs, needle", [
    (((3, 4), (3, 3), (5, 5)), {}, "g_g (4, 4)"),
    (((3, 4), (3, 3), (4, 4)), {"k1": 0}, "k1 >= 1"),
    (((3, 4), (3, 3), (4, 4)), {"lambda_value": 1.5}, "lambda"),
])
def test_bad_input(shapes, kwargs, needle) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        rerank(*(np.ones(s, dtype=np.float32) for s in shapes), **kwargs)
