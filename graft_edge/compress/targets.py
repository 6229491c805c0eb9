"""Pruning targets: what is counted per method, the smallest reachable size, step schedules, and
which earlier pruning a model may be pruned on from (checked before anything is cut or written)."""
from __future__ import annotations

import math
from typing import Any, Iterable

from torch import nn

from graft_edge.errors import GraftError
from graft_edge.model import embedding_params
from graft_edge.units import format_count, parse_size

METHODS: tuple[str, ...] = ("structured", "unstructured", "2:4")
_ALIASES = {"structured": "structured", "unstructured": "unstructured", "2:4": "2:4", "2to4": "2:4",
            "semi-structured": "2:4", "semistructured": "2:4"}
DEFAULT_FRACTION = 0.2  # the paper's per-round share of the remaining weights


def normalize_method(text: str) -> str:
    """'structured' | 'unstructured' | '2:4' (aliases: 2to4, semi-structured); GraftError otherwise."""
    key = str(text).strip().lower()
    if key not in _ALIASES:
        raise GraftError(f"pruning method {text!r}: expected one of {', '.join(METHODS)}")
    return _ALIASES[key]


def counted_size(model: nn.Module, method: str) -> int:
    """The size a method's target refers to: real parameters (structured) or nonzeros (unstructured, 2:4),
    always of the deployed embedding model (classifier excluded)."""
    return embedding_params(model, nonzero=normalize_method(method) != "structured")


def resolve_target(text: str | int, model: nn.Module, method: str) -> int:
    """Parse `60M`, `60000000`, `1.5B`, `500K` or `60%` (of the method's current count)."""
    return parse_size(text, counted_size(model, method))


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


def previous_methods(history: Iterable[dict[str, Any]] | None, arch: dict[str, Any] | None = None) -> list[str]:
    """Pruning methods already applied to a model, from its checkpoint history (and arch)."""
    found: list[str] = []
    for entry in history or []:
        m = entry.get("method") if isinstance(entry, dict) else None
        if m and m in METHODS and m not in found:
            found.append(m)
    if arch and "structured" not in found:
        found.insert(0, "structured")
    return found


def check_compatible(method: str, history: Iterable[dict[str, Any]] | None, arch: dict[str, Any] | None = None,
                     name: str = "the model") -> None:
    """Refuse mixing methods and repeating 2:4 (one clear line saying why)."""
    method = normalize_method(method)
    prev = previous_methods(history, arch)
    other = [m for m in prev if m != method]
    if other:
        raise GraftError(f"{name} was already pruned with {other[0]}; pruning it with {method} on top is not "
                         "supported: start from the dense model")
    if method == "2:4" and "2:4" in prev:
        raise GraftError(f"{name} is already 2:4 sparse; 2:4 pruning cannot go further")


def check_target(target: int, current: int, floor: int, method: str) -> None:
    """Target must be below the current count and at or above what the method can reach."""
    if target >= current:
        raise GraftError(f"target {format_count(target)} ({target:,}) is not smaller than the model's current "
                         f"{'size' if method == 'structured' else 'nonzero count'} {format_count(current)} ({current:,})")
    if target < floor:
        why = {"structured": "1 head (or --round-to dims per head) and --round-to channels left in every layer",
               "unstructured": "every prunable backbone weight removed",
               "2:4": "2:4 sparsity of the backbone's qkv/proj/fc1/fc2 is fixed"}[method]
        raise GraftError(f"target {format_count(target)} ({target:,}) is below the smallest size {method} pruning can "
                         f"reach on this model, {format_count(floor)} ({floor:,}): {why}")
