"""Per-item augmentation seeds: a batch is the same whichever loader worker builds it, and after a resume."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.config import get_preset
from graft_edge.data import build_train_loader
from graft_edge.data.seeding import item_seed


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data") / "syn"
    write_synthetic(root, ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


def _batches(root: Path, workers: int, epoch: int, start: int = 0) -> list[torch.Tensor]:
    cfg = get_preset("synthetic")
    cfg = replace(cfg, model=replace(cfg.model, img_size=(16, 32)),
                  data=replace(cfg.data, ids_per_batch=2, instances_per_id=2, num_workers=workers, erase=1.0,
                                val_fraction=0.0))
    loader, sampler, _ = build_train_loader(root, cfg)
    sampler.set_epoch(epoch, start_batch=start)
    torch.manual_seed(123 + workers)  # the main process's RNG must not matter
    return [images["rgb"] for images, _, _ in loader]


def test_same_batches_with_0_or_2_workers_and_from_a_resumed_position(data: Path) -> None:
    ref = _batches(data, 0, epoch=1)
    assert len(ref) == 4
    two = _batches(data, 2, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(ref, two, strict=True))
    resumed = _batches(data, 2, epoch=1, start=1)  # a resume starts at batch 1 on worker 0
    assert all(torch.equal(a, b) for a, b in zip(ref[1:], resumed, strict=True))
    other = _batches(data, 0, epoch=2)
    assert not torch.equal(ref[0], other[0])  # another epoch: other draws


def test_item_seeds_differ_by_every_coordinate() -> None:
    base = (0, 1, 3, 5)
    seeds = {item_seed(*base)}
    for i in range(4):
        moved = list(base)
        moved[i] += 1
        seeds.add(item_seed(*moved))
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)
    assert item_seed(*base) == item_seed(*base)


def _rank_batches(root: Path, world: int, rank: int, anchor_repeats: int) -> list[torch.Tensor]:
    cfg = get_preset("synthetic")
    cfg = replace(cfg, model=replace(cfg.model, img_size=(16, 32)),
                  data=replace(cfg.data, ids_per_batch=4, instances_per_id=2, erase=1.0, hflip=0.5, vflip=0.5,
                               anchor_repeats=anchor_repeats, val_fraction=0.0))
    loader, sampler, _ = build_train_loader(root, cfg, rank, world)
    sampler.set_epoch(2)
    return [images["nir"] for images, _, _ in loader]


@pytest.mark.parametrize("world", [2, 3])
def test_every_process_count_augments_an_image_alike(data: Path, world: int) -> None:
    """Seeds come from the item's place in the global batch: the slices of N processes (8 images: 4 + 4, or
    2 + 3 + 3) put together are the one process's batches, and in the per-process mode rank r's k-th batch is the
    one process's batch k x N + r."""
    one = _rank_batches(data, 1, 0, anchor_repeats=2)
    slices = [_rank_batches(data, world, r, anchor_repeats=2) for r in range(world)]
    assert len(one) == 4 and all(len(s) == 4 for s in slices)
    for k, batch in enumerate(one):
        assert torch.equal(torch.cat([s[k] for s in slices]), batch)
    single = _rank_batches(data, 1, 0, anchor_repeats=0)
    own = [_rank_batches(data, world, r, anchor_repeats=0) for r in range(world)]
    pairs = [(batch, single[k * world + r]) for r, batches in enumerate(own) for k, batch in enumerate(batches)
             if k * world + r < len(single)]  # a larger world rounds its epoch up to whole rounds of N batches
    assert len(pairs) == len(single) and all(torch.equal(a, b) for a, b in pairs)
