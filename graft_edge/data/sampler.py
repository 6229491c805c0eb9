"""Identity-balanced P x K batch sampler: deterministic per (seed, epoch), sharded across ranks, resumable.

Each epoch every identity's images are shuffled and cut into chunks of K (an identity with fewer
than K images gives one chunk drawn with replacement). Batches take one chunk from each of P
distinct identities, picked with probability proportional to their chunks left, so the epoch
walks through (nearly) every image once. The global batch sequence depends only on
(seed, epoch) and is generated batch by batch, so it is the same on every rank and its prefix
does not depend on the world size; rank r takes global batches r, r + W, r + 2W, ... and every
rank yields the same number of batches (DDP needs equal step counts).

With `anchor_repeats` = T > 0 (the authors' recipe) the epoch follows the official rule instead:
every training image is an anchor T times (Nano1337/GraFT data_utils/datasets/rgbnt_data_folders.py
repeats each image `num_triplet_samples` = 8 times), so an epoch is ceil(images x T / (P x K))
batches, walking through the images in as many passes as that takes. P x K is then the GLOBAL
batch: each batch is cut into W contiguous slices, rank r training on slice r, so `--nproc N`
sees the same batches, steps and samples as one GPU (the official per-GPU batch of 26 on 4 GPUs
is one global batch of 104).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler

from graft_edge.errors import GraftError


class IdentityBatchSampler(Sampler[list[int]]):
    """Yields lists of P*K dataset indices: P distinct identities, K images each."""

    def __init__(
        self,
        labels: Sequence[int],
        ids_per_batch: int,
        instances_per_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        anchor_repeats: int = 0,
    ) -> None:
        if ids_per_batch < 1 or instances_per_id < 1:
            raise GraftError(
                f"data.ids_per_batch={ids_per_batch} and data.instances_per_id={instances_per_id} must be >= 1"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise GraftError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size})")
        labels = [int(x) for x in labels]
        if not labels:
            raise GraftError("training set is empty: no images to build identity batches from")
        ids = sorted(set(labels))
        if len(ids) < ids_per_batch:
            raise GraftError(
                f"training set has {len(ids)} ids but data.ids_per_batch={ids_per_batch} needs at least {ids_per_batch}"
            )
        by_id: dict[int, list[int]] = {i: [] for i in ids}
        for index, label in enumerate(labels):
            by_id[label].append(index)
        self.pools = [np.asarray(by_id[i], dtype=np.int64) for i in ids]  # per identity, sorted indices
        self.P, self.K = int(ids_per_batch), int(instances_per_id)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_samples = len(labels)
        self.num_chunks = sum(max(1, len(p) // self.K) for p in self.pools)
        self.anchor_repeats = max(0, int(anchor_repeats))
        if self.anchor_repeats:
            if self.P * self.K < 2 * self.world_size:
                raise GraftError(f"a global batch of {self.P}x{self.K} images cannot give each of {self.world_size} "
                                 "processes 2 images: raise data.ids_per_batch or data.instances_per_id")
            self.global_batches = math.ceil(self.num_samples * self.anchor_repeats / (self.P * self.K))
            self.batches_per_epoch = self.global_batches  # per rank: every rank trains on a slice of every batch
        else:
            self.global_batches = max(1, self.num_chunks // self.P // self.world_size) * self.world_size
            self.batches_per_epoch = self.global_batches // self.world_size  # per rank
        self.epoch, self.start_batch, self._yielded = 0, 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def num_ids(self) -> int:
        """How many identities the labels hold."""
        return len(self.pools)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (the shuffle) and skip its first `start_batch` batches (resume)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise GraftError(f"start_batch={start_batch} is outside 0..{self.batches_per_epoch} (batches per epoch)")
        self.epoch, self.start_batch, self._yielded = int(epoch), int(start_batch), int(start_batch)

    def place(self, batch: int) -> tuple[int, int]:
        """Where this rank's `batch`-th batch of the epoch sits: (global batch index, slot of its first item).

        Sliced mode: every rank takes a contiguous slice of global batch `batch`; per-process mode: rank r's
        k-th batch is global batch k x W + r. One process running the global batches alone gives every item
        the same (global batch, slot), so per-item seeds from it do not depend on the process count.
        """
        if self.anchor_repeats:
            return int(batch), self.P * self.K * self.rank // self.world_size
        return int(batch) * self.world_size + self.rank, 0

    def _chunks(self, rng: np.random.Generator, pool: np.ndarray) -> list[np.ndarray]:
        """One identity's shuffled images cut into chunks of K (one resampled chunk when < K)."""
        if len(pool) < self.K:
            return [rng.choice(pool, self.K, replace=True)]
        order = rng.permutation(pool)
        return [order[j * self.K : (j + 1) * self.K] for j in range(len(order) // self.K)]

    def _global_batches(self, epoch: int, count: int) -> list[list[int]]:
        """The first `count` batches of the epoch, identical on every rank."""
        rng = np.random.default_rng([self.seed, epoch])
        chunks = [self._chunks(rng, pool) for pool in self.pools]
        left = np.array([len(c) for c in chunks], dtype=np.int64)  # chunks not yet used, per id
        everyone = np.arange(len(self.pools))
        batches = []
        for _ in range(count):
            if self.anchor_repeats and np.count_nonzero(left) < self.P:  # next pass: fresh chunks for the spent ids
                for i in np.flatnonzero(left == 0):
                    chunks[i] = self._chunks(rng, self.pools[i])
                    left[i] = len(chunks[i])
            avail = np.flatnonzero(left > 0)
            if len(avail) >= self.P:
                chosen = rng.choice(avail, self.P, replace=False, p=left[avail] / left[avail].sum())
            else:  # tail of the epoch: top up with fresh chunks of other ids
                extra = rng.choice(np.setdiff1d(everyone, avail), self.P - len(avail), replace=False)
                chosen = rng.permutation(np.concatenate([avail, extra]))
            batch: list[int] = []
            for i in chosen:
                if left[i] > 0:
                    chunk = chunks[i][len(chunks[i]) - left[i]]
                    left[i] -= 1
                else:
                    pool = self.pools[i]
                    chunk = rng.choice(pool, self.K, replace=len(pool) < self.K)
                batch.extend(int(x) for x in chunk)
            batches.append(batch)
        return batches

    def epoch_batches(self) -> list[list[int]]:
        """All of this rank's batches for the current epoch (cached)."""
        if self._cache is None or self._cache[0] != self.epoch:
            every = self._global_batches(self.epoch, self.global_batches)
            if self.anchor_repeats:  # contiguous slice r of every global batch (near-equal sizes)
                n, w = self.P * self.K, self.world_size
                mine = [b[n * self.rank // w : n * (self.rank + 1) // w] for b in every]
            else:
                mine = every[self.rank :: self.world_size]
            self._cache = (self.epoch, mine)
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        self._yielded = self.start_batch
        for batch in batches[self.start_batch :]:
            self._yielded += 1
            yield list(batch)

    def __len__(self) -> int:
        """Batches the next pass yields (batches_per_epoch minus the skipped start)."""
        return self.batches_per_epoch - self.start_batch

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where this epoch stands; pass the trainer's step count, since DataLoader prefetch runs ahead."""
        position = self._yielded if batches_done is None else int(batches_done)
        return {
            "epoch": self.epoch, "position": position, "seed": self.seed, "world_size": self.world_size,
            "ids_per_batch": self.P, "instances_per_id": self.K, "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: same epoch shuffle, skipping the batches already consumed (rescaled to this world size)."""
        for key, mine in (("num_samples", self.num_samples), ("ids_per_batch", self.P), ("instances_per_id", self.K)):
            if int(state.get(key, mine)) != mine:
                raise GraftError(
                    f"cannot resume the batch sampler: the checkpoint has {key}={state[key]} but this run has {mine}"
                )
        self.seed = int(state.get("seed", self.seed))
        self._cache = None
        position = int(state.get("position", 0))
        if self.anchor_repeats:  # positions count global batches: every rank trains on a slice of each
            start = min(self.batches_per_epoch, position)
        else:
            consumed = position * int(state.get("world_size", self.world_size))  # global batches
            start = min(self.batches_per_epoch, -(-consumed // self.world_size))
        self.set_epoch(int(state.get("epoch", 0)), start_batch=start)
