"""Evaluation batches decoded once and reused: the same validation images scored after every finetuning epoch."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

DEFAULT_MAX_BYTES = 256 << 20  # keep at most this much of decoded images; a larger split streams every pass


def _nbytes(batch: Any) -> int:
    images = batch[0]
    return sum(t.numel() * t.element_size() for t in images.values() if isinstance(t, torch.Tensor))


class ReusedBatches:
    """Iterates like `loader` (same batches, same order); the first full pass keeps the batches so later passes
    skip reading and decoding, unless they exceed `max_bytes`, in which case every pass streams from the loader.

    Only for fixed-order, augmentation-free loaders (query/gallery/validation). A pass over kept batches draws no
    random numbers where a DataLoader pass draws one, so callers that must not shift the RNG stream save and
    restore it around evaluation (train.finetune.BestEpoch does).
    """

    def __init__(self, loader: Iterable, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.loader = loader
        self.dataset = getattr(loader, "dataset", None)  # evaluation reads the samples from here
        self.max_bytes = max_bytes
        self.kept: list[Any] | None = None
        self.streams = False  # True once a pass found the split too large to keep

    def __iter__(self) -> Iterator[Any]:
        if self.kept is not None:
            yield from self.kept
            return
        kept: list[Any] = []
        size = 0
        for batch in self.loader:
            if not self.streams:
                size += _nbytes(batch)
                if size > self.max_bytes:
                    self.streams, kept = True, []
                else:
                    kept.append(batch)
            yield batch
        if not self.streams:
            self.kept = kept

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]
