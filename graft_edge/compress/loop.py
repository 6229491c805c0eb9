"""The iterative prune (+ finetune) loop shared by the CLI, the frontier and the benchmarks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from graft_edge.compress.sparse import (
    Masks,
    SemiStructuredPruner,
    UnstructuredPruner,
    apply_masks,
    mask_hook,
    masks_from_zeros,
    nm_violations,
    prunable_nonzero,
    sparse_targets,
)
from graft_edge.compress.structured import StructuredPruner
from graft_edge.compress.targets import DEFAULT_FRACTION, check_target, counted_size, normalize_method, plan_schedule
from graft_edge.errors import GraftError
from graft_edge.model import embedding_params
from graft_edge.model.arch import extract_arch

AfterStep = Callable[[nn.Module], None]
# finetune_fn(model, after_step) -> metrics dict, or (model, metrics), or None. It must call
# after_step(model) after every optimiser step when after_step is not None (weight masks).
FinetuneFn = Callable[[nn.Module, AfterStep | None], Any]
# on_step(model, entry): called after every finished step (pruned and finetuned), e.g. to checkpoint.
OnStep = Callable[[nn.Module, dict[str, Any]], None]
METRIC_KEYS = ("mAP", "R1", "R5", "R10")
# recorded per step: test metrics, the validation ones (val_mAP, ...: what the finetuning chose on) and the epoch kept
RECORDED_KEYS = (*METRIC_KEYS, *(f"val_{k}" for k in METRIC_KEYS), "best_epoch")


def method_floor(model: nn.Module, method: str, round_to: int = 8, attn_unit: str = "heads") -> int:
    """The smallest count `method` can reach on this model (structured: real params; others: nonzeros)."""
    method = normalize_method(method)
    if method == "structured":
        return StructuredPruner(model, round_to=round_to, attn_unit=attn_unit).floor()
    if method == "unstructured":
        return embedding_params(model, nonzero=True) - prunable_nonzero(model)
    pruner = SemiStructuredPruner(model)
    return embedding_params(model, nonzero=True) - pruner.removed_by(pruner.plan())


def plan_prune(model: nn.Module, target: int | None, method: str = "structured", steps: int | None = None,
               round_to: int = 8, attn_unit: str = "heads", fraction: float = DEFAULT_FRACTION) -> list[int]:
    """Validate a pruning request and return its per-step targets (nothing is changed).

    Raises GraftError when the target is not below the method's current count, below what the
    method can reach, or (2:4) unreachable; 2:4 gives a one-step schedule ending at its implied size.
    """
    method = normalize_method(method)
    current = counted_size(model, method)
    floor = method_floor(model, method, round_to, attn_unit)
    if method == "2:4":
        if target is not None:
            check_target(int(target), current, 0, method)
            if floor > int(target):
                raise GraftError(f"2:4 sparsity gives {floor:,} nonzero parameters, above the target {int(target):,}: "
                                 "the target is unreachable by 2:4 alone")
        return [floor]
    if target is None:
        raise GraftError(f"{method} pruning needs a target size")
    check_target(int(target), current, floor, method)
    prunable = prunable_nonzero(model) if method == "unstructured" else None
    return plan_schedule(current, int(target), steps, fraction, prunable=prunable)


@dataclass(frozen=True)
class PruneSpec:
    """How to prune (everything but the target): method, schedule and structured-pruning choices.

    method: "structured" (Torch-Pruning heads + MLP/FF channels), "unstructured" (global L1 over the
        backbone qkv/proj/fc1/fc2 weights) or "2:4" (semi-structured on the same weights).
    steps: prune(+finetune) steps on a geometric schedule; None: with finetuning, about `fraction` (20%)
        of the remaining size per step (unstructured: of the remaining prunable weights, as in the paper);
        without finetuning one step (magnitude rankings do not change when nothing is retrained). 2:4: one.
    round_to: structured channel widths are multiples of this (fast kernels).
    attn_unit: structured attention unit, "heads" (whole heads) or "head_dims".
    importance: a Torch-Pruning importance (structured) or an `L1Importance`-like callable (None: L1).
    """

    method: str = "structured"
    steps: int | None = None
    round_to: int = 8
    attn_unit: str = "heads"
    fraction: float = DEFAULT_FRACTION
    importance: Any = None


def _metrics(result: Any) -> tuple[nn.Module | None, dict[str, Any]]:
    model = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module):
        model, result = result
    metrics = {k: float(result[k]) for k in RECORDED_KEYS if isinstance(result, Mapping) and result.get(k) is not None}
    if "best_epoch" in metrics:
        metrics["best_epoch"] = int(metrics["best_epoch"])
    return model, metrics


def _cut(model: nn.Module, spec: PruneSpec, method: str, step_target: int,
         masks: Masks | None) -> tuple[Masks | None, dict[str, Any]]:
    """One pruning cut down to `step_target`; returns the weight masks to keep (sparse methods) and the record."""
    if method == "structured":
        StructuredPruner(model, importance=spec.importance, round_to=spec.round_to,
                         attn_unit=spec.attn_unit).step(step_target)
        return None, {"round_to": int(spec.round_to), "attn_unit": spec.attn_unit}
    if method == "unstructured":
        pruner = UnstructuredPruner(model, importance=spec.importance, masks=masks)
        pruner.step(embedding_params(model, nonzero=True) - step_target)
        return pruner.masks, {"fraction": float(spec.fraction)}
    return SemiStructuredPruner(model, importance=spec.importance).step(), {"pattern": "2:4"}


def _finetune(model: nn.Module, method: str, step_target: int, masks: Masks | None, finetune_fn: FinetuneFn,
              importance: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Finetune after a cut with the masks held (re-applied after every optimiser step); returns metrics."""
    new_model, metrics = _metrics(finetune_fn(model, mask_hook(masks) if masks is not None else None))
    if new_model is not None:
        model = new_model
    if masks is not None:
        apply_masks(model, masks)
    if method == "unstructured":  # finetuning may have revived zero-initialised biases: trim back
        excess = embedding_params(model, nonzero=True) - step_target
        if excess > 0:
            UnstructuredPruner(model, importance=importance, masks=masks).step(excess)
    return model, metrics


def prune_to_target(
    model: nn.Module,
    target: int | None,
    spec: PruneSpec = PruneSpec(),
    finetune_fn: FinetuneFn | None = None,
    on_step: OnStep | None = None,
    *,
    history: list[dict[str, Any]] | None = None,
    schedule: list[int] | None = None,
    done: int = 0,
) -> tuple[nn.Module, dict[str, Any] | None, list[dict[str, Any]]]:
    """Prune `model` (in place) to `target` parameters of the deployed embedding model.

    Args:
        model: a GraFT (dense, or already pruned by the same method).
        target: structured: real parameters; unstructured: nonzeros; 2:4: optional upper bound
            (the 2:4 size is implied; a target it cannot reach raises GraftError).
        spec: method, schedule and pruning choices (see PruneSpec).
        finetune_fn: `finetune_fn(model, after_step)` run after every step; returns metrics
            ({"mAP", "R1", ...}), `(model, metrics)` or None. `after_step` re-applies weight masks and
            must be called after every optimiser step (None for structured).
        on_step: `on_step(model, entry)` after every finished step (progress, resumable checkpoints).
        history: earlier entries (from the checkpoint) to extend.
        schedule, done: resume support: the full per-step target list of an interrupted run and how
            many of its steps are finished (the model passed in is the one after step `done`).

    Returns:
        (model, arch, history): arch is the per-layer widths for structured (None otherwise);
        history is `history` plus one dict per step: method, target, step, steps, step_target,
        params_embedding, params_nonzero, and the metrics finetune_fn returned: test mAP/R1/R5/R10, validation
        val_mAP/val_R1/... and the finetuning epoch kept (best_epoch).
    """
    method = normalize_method(spec.method)
    history = list(history or [])
    if schedule is None:
        # without finetuning magnitude rankings do not change between steps: one cut is the same
        steps = 1 if spec.steps is None and finetune_fn is None else spec.steps
        schedule = plan_prune(model, target, method, steps, spec.round_to, spec.attn_unit, spec.fraction)
    elif method != "2:4" and target is None:
        target = int(schedule[-1])
    total = len(schedule)
    masks: Masks | None = masks_from_zeros(model) if method == "unstructured" else None
    for k in range(done, total):
        step_target = int(schedule[k])
        masks, extra = _cut(model, spec, method, step_target, masks)
        metrics: dict[str, Any] = {}
        if finetune_fn is not None:
            model, metrics = _finetune(model, method, step_target, masks, finetune_fn, spec.importance)
        model.eval()
        if method == "2:4":
            bad = nm_violations(model)
            if bad:
                raise RuntimeError(f"2:4 pattern broken after finetuning in {next(iter(bad))}")
        entry = {
            "method": method, "target": int(target) if target is not None else None,
            "step": k + 1, "steps": total, "step_target": step_target,
            "params_embedding": embedding_params(model), "params_nonzero": embedding_params(model, nonzero=True),
            **extra, **metrics,
        }
        history.append(entry)
        if on_step is not None:
            on_step(model, entry)
    arch = extract_arch(model) if method == "structured" else None
    return model, arch, history


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Nonzero/total of the prunable backbone weights, and the embedding counts."""
    params = sparse_targets(model)
    total = sum(p.numel() for p in params.values())
    nz = sum(int(torch.count_nonzero(p)) for p in params.values())
    return {"prunable_total": int(total), "prunable_nonzero": int(nz), "sparsity": 1 - nz / max(1, total),
            "params_embedding": embedding_params(model), "params_nonzero": embedding_params(model, nonzero=True)}
