"""Divergence checks: a non-finite loss, weight or embedding stops the work with one clear line, never a score."""
from __future__ import annotations

import math

import numpy as np
import torch

from graft_edge.errors import GraftError


class DivergedError(GraftError):
    """Training produced a non-finite loss or weights (too high a learning rate, bad data)."""


def check_loss(loss: float, step: int, lr: float) -> None:
    """Stop at the first non-finite loss (its step and learning rate named)."""
    if not math.isfinite(loss):
        raise DivergedError(f"training diverged: loss is {loss} at step {step} (lr {lr:.3g}); nothing of this step was "
                            "kept as a best checkpoint; lower the stage's lr (--set train.stageN.lr=...)")


def nonfinite_params(module: torch.nn.Module) -> list[str]:
    """Names of parameters and buffers holding NaN or inf."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_weights(module: torch.nn.Module, step: int) -> None:
    """Stop when any weight became NaN/inf (the loss can still look finite one step before)."""
    bad = nonfinite_params(module)
    if bad:
        raise DivergedError(f"training diverged: {len(bad)} weight tensor(s) hold NaN/inf after step {step} "
                            f"(first: {bad[0]}); lower the stage's lr (--set train.stageN.lr=...)")


def check_features(features: np.ndarray, source: str) -> None:
    """Refuse embeddings holding NaN/inf: a ranking over them is meaningless."""
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise GraftError(f"{source} produced non-finite embeddings (NaN/inf) for {int((~finite).sum())} of "
                         f"{len(finite)} images: its weights are corrupt or diverged; no score is reported")
