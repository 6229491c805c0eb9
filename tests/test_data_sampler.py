"""IdentityBatchSampler: P x K structure, determinism, rank sharding, resume."""
from __future__ import annotations

from collections import Counter

import pytest

from graft_edge.data.sampler import IdentityBatchSampler
from graft_edge.errors import GraftError

# 10 ids with 8 images each, plus one id with only 2 images (sampled with replacement)
LABELS = [i for i in range(10) for _ in range(8)] + [10, 10]


def test_pk_structure() -> None:
    s = IdentityBatchSampler(LABELS, ids_per_batch=4, instances_per_id=4, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == s.batches_per_epoch == (10 * 2 + 1) // 4
    for batch in batches:
        counts = Counter(LABELS[i] for i in batch)
        assert len(batch) == 16 and len(counts) == 4 and set(counts.values()) == {4}
    seen = Counter(i for b in batches for i in b if LABELS[i] != 10)
    assert max(seen.values()) == 1  # ids with >= K images: no image twice in an epoch


def test_small_ids_sampled_with_replacement() -> None:
    labels = [0, 0, 1, 1, 1, 1, 2]  # id 0 has 2 images, id 2 has 1, K = 4
    (batch,) = list(IdentityBatchSampler(labels, ids_per_batch=3, instances_per_id=4, seed=1))
    assert Counter(labels[i] for i in batch) == Counter({0: 4, 1: 4, 2: 4})
    assert Counter(i for i in batch if labels[i] == 2) == Counter({6: 4})
    assert set(i for i in batch if labels[i] == 1) == {2, 3, 4, 5}


def test_deterministic_per_seed_and_epoch() -> None:
    a = IdentityBatchSampler(LABELS, 4, 4, seed=3)
    b = IdentityBatchSampler(LABELS, 4, 4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(IdentityBatchSampler(LABELS, 4, 4, seed=4)) != first


def test_rank_sharding() -> None:
    labels = [i for i in range(12) for _ in range(8)]  # every id has a multiple of K images
    ranks = [IdentityBatchSampler(labels, 3, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    out = [list(s) for s in ranks]
    assert len(out[0]) == len(out[1]) == len(ranks[0]) == len(ranks[1]) == 24 // 3 // 2
    assert not set(out[0][0]) & set(out[1][0])
    assert not {i for b in out[0] for i in b} & {i for b in out[1] for i in b}  # disjoint images
    single = list(IdentityBatchSampler(labels, 3, 4, seed=0))
    assert [b for pair in zip(*out) for b in pair] == single  # rank r takes global batches r, r+W, ...


def test_same_length_across_ranks_when_uneven() -> None:
    lengths = {len(IdentityBatchSampler(LABELS, 4, 4, seed=0, rank=r, world_size=3)) for r in range(3)}
    assert lengths == {5 // 3}
    tiny = [IdentityBatchSampler([0, 0, 1, 1], 2, 2, rank=r, world_size=4) for r in range(4)]
    assert all(len(list(s)) == 1 for s in tiny)  # every rank gets at least one batch


def test_resume_from_start_batch() -> None:
    s = IdentityBatchSampler(LABELS, 4, 4, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_batch=3)
    assert len(s) == len(full) - 3 and list(s) == full[3:]
    with pytest.raises(GraftError, match="start_batch=99"):
        s.set_epoch(0, start_batch=99)


def test_state_dict_round_trip() -> None:
    s = IdentityBatchSampler(LABELS, 4, 4, seed=5)
    s.set_epoch(1)
    it = iter(s)
    consumed = [next(it), next(it)]
    state = s.state_dict()
    assert (state["epoch"], state["position"]) == (1, 2)
    resumed = IdentityBatchSampler(LABELS, 4, 4, seed=0)
    resumed.load_state_dict(state)
    s.set_epoch(1)
    assert consumed + list(resumed) == list(s)
    assert s.state_dict(batches_done=1)["position"] == 1


def test_resume_on_other_world_size() -> None:
    labels = [i for i in range(12) for _ in range(8)]
    two = IdentityBatchSampler(labels, 3, 4, seed=0, rank=0, world_size=2)
    state = two.state_dict(batches_done=2)  # 2 steps x 2 ranks = 4 global batches done
    one = IdentityBatchSampler(labels, 3, 4, seed=0)
    one.load_state_dict(state)
    assert one.start_batch == 4 and list(one) == list(IdentityBatchSampler(labels, 3, 4, seed=0))[4:]
    with pytest.raises(GraftError, match="num_samples=96 but this run has 82"):
        IdentityBatchSampler(LABELS, 3, 4).load_state_dict(state)


def test_errors() -> None:
    with pytest.raises(GraftError, match="training set has 3 ids but data.ids_per_batch=8 needs at least 8"):
        IdentityBatchSampler([0, 1, 2, 2], 8, 4)
    with pytest.raises(GraftError, match="training set is empty"):
        IdentityBatchSampler([], 2, 2)
    with pytest.raises(GraftError, match="rank 2"):
        IdentityBatchSampler(LABELS, 2, 2, rank=2, world_size=2)
