"""The authors' recipe in the rgbnt100 preset: epoch length, stage steps, warm-up and the process-count rule.

The official rule (Nano1337/GraFT): every training image is repeated `num_triplet_samples: 8` times
(data_utils/datasets/rgbnt_data_folders.py), the DataLoader takes `batch_size: 26` per GPU
(data_utils/__init__.py) on 4 GPUs (cfgs/deit_gradual_fusion_rnt100_stage1.yaml `gpus`), Lightning
Fabric shards with a DistributedSampler (train.py), so a rank runs ceil(ceil(8675 * 8 / 4) / 26) steps.
"""
from __future__ import annotations

import math
from collections import Counter

import pytest

from graft_edge.config import StageConfig, get_preset
from graft_edge.data.sampler import IdentityBatchSampler
from graft_edge.train.runner import stage_steps
from graft_edge.train.schedule import warmup_for

RGBNT100_TRAIN_IMAGES, RGBNT100_TRAIN_IDS = 8675, 50  # paper §5.1


def _rgbnt100_labels() -> list[int]:
    """8,675 labels over 50 ids, as evenly as the count allows (173 or 174 images per id)."""
    return [i % RGBNT100_TRAIN_IDS for i in range(RGBNT100_TRAIN_IMAGES)]


def _official_steps_per_epoch(images: int, triplets_per_anchor: int = 8, batch_per_gpu: int = 26, gpus: int = 4) -> int:
    """DistributedSampler pads to a multiple of the GPUs, then the DataLoader keeps the last partial batch."""
    per_rank = math.ceil(images * triplets_per_anchor / gpus)
    return math.ceil(per_rank / batch_per_gpu)


def _sampler(world_size: int = 1, rank: int = 0) -> IdentityBatchSampler:
    d = get_preset("rgbnt100").data
    return IdentityBatchSampler(_rgbnt100_labels(), d.ids_per_batch, d.instances_per_id, seed=0, rank=rank,
                                world_size=world_size, anchor_repeats=d.anchor_repeats)


def test_preset_steps_per_epoch_and_total_follow_the_official_rule() -> None:
    cfg = get_preset("rgbnt100")
    assert cfg.data.ids_per_batch * cfg.data.instances_per_id == 26 * 4  # the official global batch
    assert cfg.data.anchor_repeats == 8 and cfg.train.stage1.loss.triplets_per_anchor == 8
    official = _official_steps_per_epoch(RGBNT100_TRAIN_IMAGES)
    assert official == 668
    s = _sampler()
    assert s.batches_per_epoch == len(s) == official
    assert stage_steps(cfg, 1, s.batches_per_epoch, None) == 40 * 668 == 26_720
    assert stage_steps(cfg, 2, s.batches_per_epoch, None) == 60 * 668 == 40_080


def test_an_epoch_uses_every_image_about_eight_times() -> None:
    batches = list(_sampler())
    assert all(len(b) == 104 and set(Counter(i % 50 for i in b).values()) == {8} for b in batches)
    seen = Counter(i for b in batches for i in b)
    assert len(seen) == RGBNT100_TRAIN_IMAGES  # every image is an anchor
    assert sum(seen.values()) == 668 * 104 >= 8 * RGBNT100_TRAIN_IMAGES
    assert 3 <= min(seen.values()) and max(seen.values()) <= 12  # passes overlap at their ends: a spread around 8
    assert sorted(seen.values())[len(seen) // 2] in (8, 9)  # the median image is an anchor 8-9 times


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_nproc_sees_the_same_batches_steps_and_samples_as_one_gpu(world_size: int) -> None:
    cfg = get_preset("rgbnt100")
    one = _sampler()
    one.set_epoch(3)
    single = list(one)
    ranks = [_sampler(world_size, r) for r in range(world_size)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    assert {len(x) for x in shards} == {len(single)}  # same steps per epoch on every rank
    assert all(sum((sh[k] for sh in shards), []) == single[k] for k in range(len(single)))  # slices of one batch
    steps = {stage_steps(cfg, st, s.batches_per_epoch, None) for s in ranks for st in (1, 2)}
    assert steps == {stage_steps(cfg, st, one.batches_per_epoch, None) for st in (1, 2)}
    per_stage = {st: stage_steps(cfg, st, one.batches_per_epoch, None) * 104 for st in (1, 2)}
    assert per_stage == {1: 40 * 668 * 104, 2: 60 * 668 * 104}  # samples per stage, whatever the process count


def test_resume_position_is_in_global_batches_in_the_sliced_mode() -> None:
    two = _sampler(2, 1)
    state = two.state_dict(batches_done=5)
    four = _sampler(4, 0)
    four.load_state_dict(state)
    assert four.start_batch == 5


@pytest.mark.parametrize(("world_size", "anchor_repeats", "expected"), [(1, 8, 500), (8, 8, 500), (8, 0, 63), (4, 0, 125)])
def test_warmup_counts_global_batches(world_size: int, anchor_repeats: int, expected: int) -> None:
    """Sliced mode: a step is one global batch at any process count; per-process mode: a step is N of them."""
    per_step = 1 if anchor_repeats else world_size
    assert warmup_for(StageConfig(warmup_steps=500), per_step) == expected


def test_too_many_processes_for_the_global_batch() -> None:
    from graft_edge.errors import GraftError

    with pytest.raises(GraftError, match="cannot give each of 8 processes 2 images"):
        IdentityBatchSampler([0, 0, 1, 1, 2, 2], 2, 2, world_size=8, anchor_repeats=1)


def test_configs_written_before_the_recipe_keep_their_epoch_and_triplets() -> None:
    from graft_edge.config import config_from_dict, config_to_dict

    full = config_to_dict(get_preset("rgbnt100"))
    old = {**full, "data": {k: v for k, v in full["data"].items() if k != "anchor_repeats"}}
    old["train"] = {**full["train"], **{s: {**full["train"][s], "loss": {k: v for k, v in full["train"][s]["loss"].items()
                                                                         if k != "triplets_per_anchor"}}
                                        for s in ("stage1", "stage2")}}
    legacy = config_from_dict(old)
    assert legacy.data.anchor_repeats == 0 and legacy.train.stage2.loss.triplets_per_anchor == 1
    now = config_from_dict(full)
    assert now.data.anchor_repeats == 8 and now.train.stage1.loss.triplets_per_anchor == 8
    partial = config_from_dict({"preset": "rgbnt100", "data": {"num_workers": 1}})
    assert partial.data.anchor_repeats == 8  # a partial config starts from the preset
