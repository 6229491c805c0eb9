"""Missing-modality training: per sample, drop a random non-empty strict subset of the modalities.

The drop is a (B, M) presence mask that the model takes (`GraFT.forward(inputs, present)`): every modality's
images still go through the backbone and the fusion tokens are averaged over the kept ones only, the exact
computation of the exported graphs' `present` input, so training and deployment see the same function. Nothing is
ever dropped to zero modalities.

Each sample's draw is a pure function of (seed, sampler epoch, global batch, position in the global batch), like
its augmentation seed: a run resumed mid-epoch draws the same masks as an uninterrupted one, and `--nproc N` draws
the masks of one process's global batch, whatever N.
"""
from __future__ import annotations

import numpy as np
import torch

from graft_edge.errors import GraftError

_STREAM = 0x6D6F64  # keeps these draws apart from any other stream seeded from the same position


def kept_subsets(num_modalities: int) -> np.ndarray:
    """(2^M - 2, M) 0/1 rows: every non-empty strict subset of M modalities that a drop can leave, by bit order."""
    if num_modalities < 2:
        raise GraftError(f"modality dropout needs at least 2 modalities (the model has {num_modalities})")
    codes = np.arange(1, 2**num_modalities - 1)
    return ((codes[:, None] >> np.arange(num_modalities)) & 1).astype(np.float32)


def draw_presence(p: float, num_modalities: int, seed: int, epoch: int, global_batch: int, start: int,
                  count: int) -> torch.Tensor:
    """Masks (count, M) of the samples start..start+count-1 of one global batch.

    A sample keeps every modality with probability 1 - p; otherwise it keeps a uniformly drawn non-empty strict
    subset (so a random non-empty strict subset is dropped). Sample j's mask depends only on (seed, epoch,
    global_batch, j), never on `start` or `count`.
    """
    if not 0.0 <= p <= 1.0:
        raise GraftError(f"train.modality_dropout={p}: expected a probability in [0, 1]")
    full = torch.ones((count, num_modalities), dtype=torch.float32)
    if p == 0.0 or count == 0:
        return full
    subsets = kept_subsets(num_modalities)
    rng = np.random.default_rng([int(seed), int(epoch), int(global_batch), _STREAM])
    u = rng.random((start + count, 2))[start:]  # row j: (drop?, which subset) of sample j; prefix-stable
    drop = u[:, 0] < p
    which = np.minimum((u[:, 1] * len(subsets)).astype(np.int64), len(subsets) - 1)
    full[torch.from_numpy(drop)] = torch.from_numpy(subsets[which[drop]])
    return full


class ModalityDropout:
    """The presence masks of one training run: probability, modality count, seed and the batch sampler's position.

    `sampler` is the run's IdentityBatchSampler: its `epoch` and `place` put this process's batches in the global
    batch sequence.
    """

    def __init__(self, p: float, num_modalities: int, seed: int, sampler: object) -> None:
        kept_subsets(num_modalities)  # at least two modalities
        self.p, self.num_modalities, self.seed, self.sampler = float(p), int(num_modalities), int(seed), sampler

    def mask(self, batch: int, count: int) -> torch.Tensor:
        """(count, M) mask of this process's `batch`-th batch of the current epoch (0-based)."""
        global_batch, start = self.sampler.place(batch)
        return draw_presence(self.p, self.num_modalities, self.seed, self.sampler.epoch, global_batch, start, count)


def modality_dropout(p: float, num_modalities: int, seed: int, sampler: object) -> ModalityDropout | None:
    """A ModalityDropout, or None when p is 0 (the plain recipe draws nothing)."""
    return ModalityDropout(p, num_modalities, seed, sampler) if p > 0 else None
