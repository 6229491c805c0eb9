"""Per-iteration learning-rate schedules (paper §5.2): warmup -> inverse-sqrt decay -> linear cooldown, or constant.

`lr_factor` is a pure function of the optimizer-step index so that a resumed run recomputes the
exact same learning rate from the step it restarts at.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from graft_edge.config import StageConfig

SCHEDULES: tuple[str, ...] = ("warmup_sqrt", "constant")


def _warmup_sqrt(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1 over `warmup_steps`, then sqrt(warmup / (step + 1)) (continuous at the join)."""
    w = max(1, int(warmup_steps))
    if step < w:
        return (step + 1) / w
    return math.sqrt(w / (step + 1))


def lr_factor(step: int, total_steps: int, schedule: str = "warmup_sqrt", warmup_steps: int = 500,
              cooldown_frac: float = 0.1) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based) of a stage of `total_steps` steps.

    warmup_sqrt: (step+1)/W while step < W, then sqrt(W/(step+1)); over the last
    C = ceil(cooldown_frac * total_steps) steps it falls linearly from the value reached at the
    cooldown start to 0 (the last step uses 1/C of it; "0" is where the line would be one step later).
    constant: 1.0 always.
    """
    if schedule == "constant":
        return 1.0
    if schedule != "warmup_sqrt":
        raise ValueError(f"unknown schedule {schedule!r}: expected one of {SCHEDULES}")
    total = max(1, int(total_steps))
    cool = min(total, math.ceil(max(0.0, cooldown_frac) * total))
    start = total - cool
    if cool == 0 or step < start:
        return _warmup_sqrt(step, warmup_steps)
    remaining = max(0, total - step)  # cool at the cooldown start, 1 at the last step
    return _warmup_sqrt(start, warmup_steps) * remaining / cool


def warmup_for(stage: StageConfig, global_batches_per_step: float = 1.0) -> int:
    """Warm-up in this process's optimizer steps: `warmup_steps` counts global batches of the recipe.

    When every step is one global batch (data.anchor_repeats > 0, any process count) it is used as is;
    when N processes each take their own P x K batch (anchor_repeats = 0) one step is N global
    batches, so the warm-up covers the same samples in warmup_steps / N steps.
    """
    return max(0, math.ceil(stage.warmup_steps / max(1.0, global_batches_per_step)))


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig, total_steps: int,
                    global_batches_per_step: float = 1.0) -> LambdaLR:
    """A LambdaLR applying `lr_factor` of the stage to every param group of the optimizer."""
    warmup = warmup_for(stage, global_batches_per_step)
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, stage.schedule, warmup, stage.cooldown_frac))
