"""Pruning targets: parsed once at the edge (`parse_targets`), resolved against a model's count, checked against
what a method can reach, and spread over steps (`plan_schedule`)."""
from __future__ import annotations

import math
from typing import Sequence

from graft_edge.errors import GraftError
from graft_edge.units import Size, format_count, parse_size_spec

DEFAULT_FRACTION = 0.2  # the paper's per-round share of the remaining weights


def parse_targets(text: str | Sequence[str | Size]) -> tuple[Size, ...]:
    """'80%,70%,60%' or '76M,70M' -> Sizes, parsed once at the edge (before any data, training or pruning); each is
    resolved against a model's count later (`Size.of`). Sizes pass through unchanged."""
    items = [t if isinstance(t, Size) else str(t).strip()
             for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    if not items:
        raise GraftError("--targets: expected a comma-separated list like 80%,70%,60% or 76M,70M,60M")
    out = []
    for item in items:
        try:
            out.append(parse_size_spec(item))
        except GraftError as exc:
            raise GraftError(f"--targets {item!r}: {exc}") from None
    return tuple(out)


def resolve_target(text: str | int | Size, current: int) -> int:
    """`60M`, `60000000`, `1.5B`, `500K` or `60%` (of `current`, the method's count of the model) as a count."""
    return parse_size_spec(text).of(current)


def plan_schedule(current: int, target: int, steps: int | None = None, fraction: float = DEFAULT_FRACTION,
                  prunable: int | None = None) -> list[int]:
    """Per-step targets from `current` down to `target` (always the last one).

    steps given: a geometric schedule of that many steps. steps=None: steps that each remove about
    `fraction` of what remains: of the remaining *prunable* weights when `prunable` is given (the
    paper's unstructured rounds: 20% of the remaining backbone attention/MLP weights, the last round
    trimmed to land on the target), else of the remaining size (structured).
    """
    current, target = int(current), int(target)
    if target >= current:
        return [target]
    if steps is None:
        if not 0 < fraction < 1:
            raise GraftError(f"pruning fraction per step {fraction}: expected a number in (0, 1)")
        if prunable is not None:
            sched, size, left = [], current, int(prunable)
            while size > target and left > 0 and len(sched) < 1000:
                amount = min(max(1, int(round(fraction * left))), size - target)
                if size - amount - target < 0.25 * amount:  # fold a sliver of a last round into this one
                    amount = size - target
                size, left = size - amount, left - amount
                sched.append(size)
            if not sched or sched[-1] != target:
                sched.append(target)
            return sched
        steps = max(1, math.ceil(math.log(target / current) / math.log(1.0 - fraction) - 1e-9))
    if int(steps) < 1:
        raise GraftError(f"--steps {steps}: expected a positive integer")
    steps = int(steps)
    ratio = target / current
    sched = [int(round(current * ratio ** (k / steps))) for k in range(1, steps)] + [target]
    return [max(t, target) for t in sched]


def check_target(target: int, current: int, floor: int, method: str, why: str) -> None:
    """Target must be below the current count and at or above what the method can reach (`why` says why not)."""
    if target >= current:
        raise GraftError(f"target {format_count(target)} ({target:,}) is not smaller than the model's current "
                         f"{'size' if method == 'structured' else 'nonzero count'} {format_count(current)} ({current:,})")
    if target < floor:
        raise GraftError(f"target {format_count(target)} ({target:,}) is below the smallest size {method} pruning can "
                         f"reach on this model, {format_count(floor)} ({floor:,}): {why}")
