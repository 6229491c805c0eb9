"""Augmentation seeds as a pure function of where an item sits in the GLOBAL batch sequence.

DataLoader workers draw their RNG seed once (persistent workers) and take batches round-robin, so
the augmentation of a batch depends on which worker got it and what that worker drew before: a
run resumed mid-epoch would augment differently. Here every item of every batch carries its own
seed from (train seed, sampler epoch, global batch, slot in the global batch) and the dataset
augments under it, so the images of a batch are the same whichever worker builds them, with any
number of workers, uninterrupted or resumed, and whichever process of a `--nproc N` run trains
on them (one process sees the same augmented images as N processes together).
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from graft_edge.data.sampler import IdentityBatchSampler


def item_seed(seed: int, epoch: int, batch: int, slot: int) -> int:
    """A 63-bit seed for one item from its global position (numpy SeedSequence): batch index and slot in it."""
    state = np.random.SeedSequence([seed, epoch, batch, slot]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """Wraps the identity sampler: yields [(index, item seed), ...] for the dataset's seeded items."""

    def __init__(self, batches: IdentityBatchSampler, seed: int) -> None:
        self.batches, self.seed = batches, int(seed)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.batches
        epoch = s.epoch
        for k, batch in enumerate(s, start=s.start_batch):
            global_batch, first = s.place(k)
            yield [(i, item_seed(self.seed, epoch, global_batch, first + j)) for j, i in enumerate(batch)]

    def __len__(self) -> int:
        return len(self.batches)


def seed_worker(worker_id: int, seed: int = 0, rank: int = 0) -> None:
    """worker_init_fn: python/numpy RNGs of a loader worker from (seed, rank, worker) (torch's is the item seed)."""
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(1, np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed(int(state[0]))
