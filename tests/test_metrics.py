"""evaluate_rank on hand-computed rankings: mAP, CMC, ties, same-camera filtering, no-match queries."""
from __future__ import annotations

import numpy as np
import pytest

from graft_edge import evaluate_rank
from graft_edge.retrieval.metrics import pairwise_distance


def test_perfect_ranking() -> None:
    dist = np.array([[0.1, 0.9, 0.8], [0.9, 0.1, 0.8]])
    r = evaluate_rank(dist, np.array([1, 2]), np.array([1, 2, 3]), np.array([0, 0]), np.array([1, 1, 1]))
    assert r.mAP == pytest.approx(1.0)
    assert r.cmc[0] == pytest.approx(1.0) and len(r.cmc) == 3


def test_hand_computed_ap_and_cmc() -> None:
    # gallery ids ranked by distance: [2, 1, 3, 1] -> matches for query id 1 at ranks 2 and 4
    dist = np.array([[0.2, 0.1, 0.3, 0.4]])
    g_ids = np.array([1, 2, 3, 1])
    r = evaluate_rank(dist[:, [1, 0, 2, 3]], np.array([1]), g_ids[[1, 0, 2, 3]], np.array([0]), np.array([1, 1, 1, 1]))
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert list(r.cmc[:4]) == [0.0, 1.0, 1.0, 1.0]
    s = r.summary()
    assert s["R1"] == 0.0 and s["R5"] == 1.0


def test_same_id_same_camera_is_removed() -> None:
    # the nearest gallery item is the same id seen by the same camera: it must not count
    dist = np.array([[0.0, 0.5, 0.6]])
    r = evaluate_rank(dist, np.array([7]), np.array([7, 8, 7]), np.array([3]), np.array([3, 1, 2]))
    # remaining ranking: id8 (miss), id7 (hit at rank 2)
    assert r.mAP == pytest.approx(0.5)
    assert r.cmc[0] == 0.0 and r.cmc[1] == 1.0
    # same camera but different id is kept (a distractor), same id different camera is a match
    dist = np.array([[0.0, 0.5], [0.4, 0.3]])
    r = evaluate_rank(dist, np.array([7, 8]), np.array([8, 7]), np.array([3, 1]), np.array([3, 3]))
    assert r.num_skipped == 1 and r.num_valid == 1  # query 0's only true match shares its camera


def test_queries_without_valid_match_are_skipped_and_counted() -> None:
    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    r = evaluate_rank(dist, np.array([1, 9]), np.array([1, 2]), np.array([0, 0]), np.array([1, 1]))
    assert r.num_valid == 1 and r.num_skipped == 1
    assert r.mAP == pytest.approx(1.0)



@pytest.mark.parametrize("q_ids, q_cams, g_cams", [
    ([8, 9], [0, 0], [1, 1]),  # no query id in the gallery
    ([1, 2], [1, 1], [1, 1]),  # one camera: every true match shares the query's camera
])
def test_no_valid_query_is_an_error_not_map_zero(q_ids, q_cams, g_cams) -> None:
    from graft_edge.errors import GraftError

    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    with pytest.raises(GraftError, match="no query has a valid match"):
        evaluate_rank(dist, np.array(q_ids), np.array([1, 2]), np.array(q_cams), np.array(g_cams))


def test_ties_are_broken_by_gallery_order() -> None:
    # equal distances: the stable order keeps gallery index order
    dist = np.array([[0.5, 0.5, 0.5]])
    r = evaluate_rank(dist, np.array([1]), np.array([2, 1, 1]), np.array([0]), np.array([1, 1, 1]))
    assert r.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r.cmc[0] == 0.0


def test_max_rank_truncates_cmc_and_mismatched_shapes_fail() -> None:
    rng = np.random.default_rng(0)
    dist = rng.random((5, 60))
    g = rng.integers(0, 5, 60)
    r = evaluate_rank(dist, np.arange(5), g, np.zeros(5), np.ones(60), max_rank=50)
    assert len(r.cmc) == 50 and np.all(np.diff(r.cmc) >= 0) and 0 <= r.mAP <= 1
    with pytest.raises(ValueError):
        evaluate_rank(dist, np.arange(4), g, np.zeros(5), np.ones(60))


def test_pairwise_distance_is_cosine_equivalent() -> None:
    q = np.array([[1.0, 0.0], [0.0, 2.0]])
    g = np.array([[2.0, 0.0], [1.0, 1.0]])
    d = pairwise_distance(q, g)
    assert d[0, 0] == pytest.approx(0.0, abs=1e-7)
    assert d[0, 1] == pytest.approx(np.sqrt(2 - np.sqrt(2)))
