"""Data layer: on-disk layouts, the multimodal dataset, paired transforms, the P x K sampler, loaders.

Loader items are (images: {modality: (B, 3, H, W)}, labels (B,), camids (B,)); labels are
training labels 0..N-1 in the train loader and the on-disk pids in the query/gallery loaders.
The train loader serves only the ids left after the validation split (data.val_fraction, split.py).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from graft_edge.config import MODALITIES, GraftConfig, ModelConfig
from graft_edge.data.dataset import ReidDataset
from graft_edge.data.layouts import Layout, Sample, Source, detect_layout, num_ids, parse_name, read_split, relabel
from graft_edge.data.protocol import require_valid_queries
from graft_edge.data.sampler import IdentityBatchSampler
from graft_edge.data.seeding import SeededBatches, seed_worker
from graft_edge.data.split import TrainValSplit, split_train_val
from graft_edge.data.transforms import AugParams, PairedTransform
from graft_edge.errors import GraftError

__all__ = [
    "AugParams", "IdentityBatchSampler", "Layout", "PairedTransform", "ReidDataset", "Sample", "Source",
    "TrainValSplit", "build_eval_loaders", "build_train_loader", "build_val_loaders", "dataset_modalities",
    "detect_layout", "parse_name", "read_split", "relabel", "train_val_split",
]


def dataset_modalities(root: str | Path) -> tuple[str, ...]:
    """The modalities the dataset at `root` holds, in canonical order (rgb, nir, tir)."""
    held = detect_layout(root).modalities
    return tuple(m for m in MODALITIES if m in held)


def _loader_kwargs(num_workers: int) -> dict:
    """DataLoader options shared by train and eval loaders."""
    if num_workers < 0:
        raise GraftError(f"data.num_workers={num_workers}: expected 0 or more")
    kwargs: dict = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=2)
    return kwargs


def build_train_loader(
    root: str | Path, cfg: GraftConfig, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader, IdentityBatchSampler, int]:
    """Training loader over ROOT's train split less the validation ids: P x K batches of this rank; and the id count."""
    m, d = cfg.model, cfg.data
    samples = list(train_val_split(root, cfg).train)
    transform = PairedTransform(m.img_size, m.mean, m.std, train=True, hflip=d.hflip, vflip=d.vflip, erase=d.erase)
    dataset = ReidDataset(samples, m.modalities, transform)
    sampler = IdentityBatchSampler(
        dataset.labels, d.ids_per_batch, d.instances_per_id, seed=cfg.train.seed, rank=rank, world_size=world_size,
        anchor_repeats=d.anchor_repeats,
    )
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)  # worker seeds, per rank
    seeded = SeededBatches(sampler, cfg.train.seed)  # augmentation seeded per item by its global position
    loader = DataLoader(dataset, batch_sampler=seeded, generator=generator,
                        worker_init_fn=functools.partial(seed_worker, seed=cfg.train.seed, rank=rank),
                        **_loader_kwargs(d.num_workers))
    return loader, sampler, num_ids(samples)


def train_val_split(root: str | Path, cfg: GraftConfig) -> TrainValSplit:
    """ROOT's train split divided into training ids and held-out validation ids (data.val_fraction, data.val_seed),
    the validation gallery with data.val_distractors images of every training id."""
    samples = read_split(root, "train", cfg.model.modalities)
    if not samples:
        raise GraftError(f"data root {root} has no training images (pid -1 junk images are skipped)")
    return split_train_val(samples, cfg.data.val_fraction, cfg.data.val_seed, cfg.data.val_distractors)


def _eval_loader(samples: list[Sample], model_cfg: ModelConfig, batch_size: int, num_workers: int) -> DataLoader:
    """Resize + normalise only, fixed order.

    The loader has its own generator: starting an iteration (worker seeds) never draws from the process's RNG. With
    persistent workers only a loader's first iteration draws, so a run resumed mid-training would otherwise shift
    the training stream (dropout) by its evaluations' draws and end with other weights than an uninterrupted run."""
    transform = PairedTransform(model_cfg.img_size, model_cfg.mean, model_cfg.std, train=False)
    dataset = ReidDataset(samples, model_cfg.modalities, transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator().manual_seed(0),
                      **_loader_kwargs(num_workers))


def build_val_loaders(root: str | Path, cfg: GraftConfig, num_workers: int | None = None
                      ) -> tuple[DataLoader, DataLoader] | None:
    """Validation query and gallery loaders over the held-out training ids; None when data.val_fraction is 0."""
    split = train_val_split(root, cfg)
    if not split.val_ids:
        return None
    if not split.has_val:
        raise GraftError(f"data.val_fraction={cfg.data.val_fraction}: the {len(split.val_ids)} held-out id(s) of {root} "
                         "were each seen by one camera only, so no validation query exists; raise the fraction or use 0")
    workers = cfg.data.num_workers if num_workers is None else num_workers
    bs = cfg.data.eval_batch_size
    return (_eval_loader(list(split.val_query), cfg.model, bs, workers),
            _eval_loader(list(split.val_gallery), cfg.model, bs, workers))


def build_eval_loaders(
    root: str | Path, model_cfg: ModelConfig, batch_size: int, num_workers: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Query and gallery loaders (resize + normalise only, fixed order); labels are on-disk pids."""
    if batch_size < 1:
        raise GraftError(f"batch size {batch_size}: expected a positive integer")
    loaders, splits = [], []
    for split in ("query", "gallery"):
        samples = read_split(root, split, model_cfg.modalities)
        if not samples:
            raise GraftError(f"data root {root} has no {split} images")
        splits.append(samples)
        loaders.append(_eval_loader(samples, model_cfg, batch_size, num_workers))
    require_valid_queries(root, *splits)
    return loaders[0], loaders[1]
