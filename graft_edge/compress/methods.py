"""Pruning methods as objects: what each counts, how far it can go, how it schedules, cuts and holds a cut.

`get_method("2to4")` parses a method name once, at the edge; everything downstream holds the object.
Each method builds its pruner (`StructuredPruner`, `UnstructuredPruner`, `SemiStructuredPruner`), which
share one protocol: `floor()` (the smallest reachable size) and `step(target)` (prune down to `target`
of the method's own count: parameters for structured, nonzeros for the sparse methods; 2:4's size is
implied by its pattern, so it takes none). The history of a checkpoint records methods by `name`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from torch import nn

from graft_edge.compress.sparse import (
    Masks,
    SemiStructuredPruner,
    UnstructuredPruner,
    apply_masks,
    masks_from_zeros,
    nm_violations,
    prunable_nonzero,
)
from graft_edge.compress.structured import StructuredPruner
from graft_edge.compress.targets import DEFAULT_FRACTION, check_target, plan_schedule, resolve_target
from graft_edge.errors import GraftError
from graft_edge.model import embedding_params


@dataclass(frozen=True)
class PruneSpec:
    """How to prune (everything but the target): method, schedule and structured-pruning choices.

    method: a PruneMethod or its name: "structured" (Torch-Pruning heads + MLP/FF channels), "unstructured"
        (global L1 over the backbone qkv/proj/fc1/fc2 weights) or "2:4" (semi-structured on the same weights).
    steps: prune(+finetune) steps on a geometric schedule; None: with finetuning, about `fraction` (20%)
        of the remaining size per step (unstructured: of the remaining prunable weights, as in the paper);
        without finetuning one step (magnitude rankings do not change when nothing is retrained). 2:4: one.
    round_to: structured channel widths are multiples of this (fast kernels).
    attn_unit: structured attention unit, "heads" (whole heads) or "head_dims".
    importance: a Torch-Pruning importance (structured) or an `L1Importance`-like callable (None: L1).
    """

    method: PruneMethod | str = "structured"
    steps: int | None = None
    round_to: int = 8
    attn_unit: str = "heads"
    fraction: float = DEFAULT_FRACTION
    importance: Any = None

    @property
    def prune_method(self) -> PruneMethod:
        """The method as an object (a name given here is parsed here, once per spec)."""
        return get_method(self.method)


class PruneMethod:
    """One pruning method. Subclasses set the class attributes and build their pruner."""

    name: str = ""
    counts: str = "parameters"  # what its targets count: parameters | nonzero parameters
    keeps_architecture: bool = True  # False: the layer widths change (the checkpoint stores them)
    floor_reason: str = ""  # why its floor is where it is (for the error line of a target below it)

    def __repr__(self) -> str:
        return f"PruneMethod({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruneMethod) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def counted_size(self, model: nn.Module) -> int:
        """The size its targets refer to, always of the deployed embedding model (classifier excluded)."""
        return embedding_params(model, nonzero=self.counts != "parameters")

    def resolve_target(self, text: str | int, model: nn.Module) -> int:
        """A target (`60M`, `60%`, ...) as this method's count; percentages are of the model's current count."""
        return resolve_target(text, self.counted_size(model))

    def pruner(self, model: nn.Module, spec: PruneSpec, masks: Masks | None = None) -> Any:
        """The pruner (`floor()`, `step(target)`) of this method on `model`."""
        raise NotImplementedError

    def floor(self, model: nn.Module, spec: PruneSpec = PruneSpec()) -> int:
        """The smallest count this method can reach on this model."""
        return int(self.pruner(model, spec).floor())

    def initial_masks(self, model: nn.Module) -> Masks | None:
        """The weight masks a (resumed) run starts from: the model's current zeros for unstructured."""
        return None

    def plan(self, model: nn.Module, target: int | None, spec: PruneSpec, finetuned: bool) -> list[int]:
        """Validate a request and return its per-step targets (nothing is changed); GraftError when the target is
        not below the current count or below the floor. Without finetuning one cut is the same as several."""
        if target is None:
            raise GraftError(f"{self.name} pruning needs a target size")
        current, floor = self.counted_size(model), self.floor(model, spec)
        check_target(int(target), current, floor, self.name, self.floor_reason)
        steps = 1 if spec.steps is None and not finetuned else spec.steps
        return plan_schedule(current, int(target), steps, spec.fraction, prunable=self._prunable(model))

    def _prunable(self, model: nn.Module) -> int | None:
        return None

    def cut(self, model: nn.Module, spec: PruneSpec, step_target: int,
            masks: Masks | None) -> tuple[Masks | None, dict[str, Any]]:
        """One cut down to `step_target`: the weight masks to hold during finetuning (sparse methods) and what the
        history records of it."""
        pruner = self.pruner(model, spec, masks)
        pruner.step(step_target)
        return getattr(pruner, "masks", None), self.record(spec)

    def record(self, spec: PruneSpec) -> dict[str, Any]:
        return {}

    def hold(self, model: nn.Module, spec: PruneSpec, step_target: int, masks: Masks | None) -> None:
        """Hold a cut after finetuning (or right after the cut): re-apply its masks, check what the method promises."""
        if masks is not None:
            apply_masks(model, masks)


class Structured(PruneMethod):
    """Torch-Pruning: whole heads (or head dims) and MLP / encoder feed-forward channels; really smaller."""

    name = "structured"
    keeps_architecture = False
    floor_reason = "1 head (or --round-to dims per head) and --round-to channels left in every layer"

    def pruner(self, model: nn.Module, spec: PruneSpec, masks: Masks | None = None) -> StructuredPruner:
        return StructuredPruner(model, importance=spec.importance, round_to=spec.round_to, attn_unit=spec.attn_unit)

    def record(self, spec: PruneSpec) -> dict[str, Any]:
        return {"round_to": int(spec.round_to), "attn_unit": spec.attn_unit}


class Unstructured(PruneMethod):
    """The paper's global L1 magnitude pruning of the backbone attention / MLP weights; zeros, same shapes."""

    name = "unstructured"
    counts = "nonzero parameters"
    floor_reason = "every prunable backbone weight removed"

    def pruner(self, model: nn.Module, spec: PruneSpec, masks: Masks | None = None) -> UnstructuredPruner:
        return UnstructuredPruner(model, importance=spec.importance, masks=masks)

    def initial_masks(self, model: nn.Module) -> Masks | None:
        return masks_from_zeros(model)

    def _prunable(self, model: nn.Module) -> int | None:
        return prunable_nonzero(model)  # the paper's rounds take 20% of the remaining prunable weights

    def record(self, spec: PruneSpec) -> dict[str, Any]:
        return {"fraction": float(spec.fraction)}

    def hold(self, model: nn.Module, spec: PruneSpec, step_target: int, masks: Masks | None) -> None:
        super().hold(model, spec, step_target, masks)
        if self.counted_size(model) > step_target:  # finetuning may revive zero-initialised biases: trim back
            UnstructuredPruner(model, importance=spec.importance, masks=masks).step(step_target)


class SemiStructured(PruneMethod):
    """2:4 semi-structured sparsity of the same weights (NVIDIA sparse tensor cores); its size is implied."""

    name = "2:4"
    counts = "nonzero parameters"
    floor_reason = "2:4 sparsity of the backbone's qkv/proj/fc1/fc2 is fixed"

    def pruner(self, model: nn.Module, spec: PruneSpec, masks: Masks | None = None) -> SemiStructuredPruner:
        return SemiStructuredPruner(model, importance=spec.importance)

    def plan(self, model: nn.Module, target: int | None, spec: PruneSpec, finetuned: bool) -> list[int]:
        """One step to the size the 2:4 pattern implies; a target, when given, is an upper bound it must meet."""
        floor = self.floor(model, spec)
        if target is not None:
            check_target(int(target), self.counted_size(model), 0, self.name, self.floor_reason)
            if floor > int(target):
                raise GraftError(f"2:4 sparsity gives {floor:,} nonzero parameters, above the target {int(target):,}: "
                                 "the target is unreachable by 2:4 alone")
        return [floor]

    def record(self, spec: PruneSpec) -> dict[str, Any]:
        return {"pattern": "2:4"}

    def hold(self, model: nn.Module, spec: PruneSpec, step_target: int, masks: Masks | None) -> None:
        super().hold(model, spec, step_target, masks)
        bad = nm_violations(model)
        if bad:
            raise RuntimeError(f"2:4 pattern broken after finetuning in {next(iter(bad))}")


METHODS: dict[str, PruneMethod] = {m.name: m for m in (Structured(), Unstructured(), SemiStructured())}
ALIASES = {"2to4": "2:4", "semi-structured": "2:4", "semistructured": "2:4"}


def get_method(method: str | PruneMethod) -> PruneMethod:
    """The method of a name (structured | unstructured | 2:4; aliases 2to4, semi-structured); GraftError otherwise."""
    if isinstance(method, PruneMethod):
        return method
    key = str(method).strip().lower()
    key = ALIASES.get(key, key)
    if key not in METHODS:
        raise GraftError(f"pruning method {method!r}: expected one of {', '.join(METHODS)}")
    return METHODS[key]


def previous_methods(history: Iterable[dict[str, Any]] | None, arch: dict[str, Any] | None = None) -> list[str]:
    """Names of the pruning methods already applied to a model, from its checkpoint history (and arch)."""
    found: list[str] = []
    for entry in history or []:
        m = entry.get("method") if isinstance(entry, dict) else None
        if m and m in METHODS and m not in found:
            found.append(m)
    if arch and "structured" not in found:
        found.insert(0, "structured")
    return found


def check_compatible(method: PruneMethod, history: Iterable[dict[str, Any]] | None,
                     arch: dict[str, Any] | None = None, name: str = "the model") -> None:
    """Refuse mixing methods and repeating 2:4 (one clear line saying why)."""
    prev = previous_methods(history, arch)
    other = [m for m in prev if m != method.name]
    if other:
        raise GraftError(f"{name} was already pruned with {other[0]}; pruning it with {method.name} on top is not "
                         "supported: start from the dense model")
    if method.name == "2:4" and "2:4" in prev:
        raise GraftError(f"{name} is already 2:4 sparse; 2:4 pruning cannot go further")
