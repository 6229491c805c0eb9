"""The iterative prune (+ finetune) loop shared by the CLI, the frontier and the benchmarks."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from graft_edge.compress.methods import PruneMethod, PruneSpec
from graft_edge.compress.sparse import Masks, mask_hook, sparse_targets
from graft_edge.evaluation import METRIC_KEYS
from graft_edge.model import embedding_params
from graft_edge.model.arch import extract_arch

AfterStep = Callable[[nn.Module], None]
# finetune_fn(model, after_step) -> metrics dict, or (model, metrics), or None. It must call
# after_step(model) after every optimiser step when after_step is not None (weight masks).
FinetuneFn = Callable[[nn.Module, AfterStep | None], Any]
# on_step(model, entry): called after every finished step (pruned and finetuned), e.g. to checkpoint.
OnStep = Callable[[nn.Module, dict[str, Any]], None]
# recorded per step: test metrics, the validation ones (val_mAP, ...: what the finetuning chose on) and the epoch kept
RECORDED_KEYS = (*METRIC_KEYS, *(f"val_{k}" for k in METRIC_KEYS), "best_epoch")


def plan_prune(model: nn.Module, target: int | None, spec: PruneSpec = PruneSpec(), finetuned: bool = True) -> list[int]:
    """Validate a pruning request and return its per-step targets (nothing is changed); see PruneMethod.plan."""
    return spec.prune_method.plan(model, target, spec, finetuned)


def _metrics(result: Any) -> tuple[nn.Module | None, dict[str, Any]]:
    model = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module):
        model, result = result
    metrics = {k: float(result[k]) for k in RECORDED_KEYS if isinstance(result, Mapping) and result.get(k) is not None}
    if "best_epoch" in metrics:
        metrics["best_epoch"] = int(metrics["best_epoch"])
    return model, metrics


def _finetune(model: nn.Module, method: PruneMethod, spec: PruneSpec, step_target: int, masks: Masks | None,
              finetune_fn: FinetuneFn) -> tuple[nn.Module, dict[str, Any]]:
    """Finetune after a cut with the masks held (re-applied after every optimiser step); returns metrics."""
    new_model, metrics = _metrics(finetune_fn(model, mask_hook(masks) if masks is not None else None))
    if new_model is not None:
        model = new_model
    method.hold(model, spec, step_target, masks)
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
        spec: method, schedule and pruning choices (see PruneSpec; its method may be a name or a PruneMethod).
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
    method = spec.prune_method
    history = list(history or [])
    if schedule is None:
        schedule = method.plan(model, target, spec, finetuned=finetune_fn is not None)
    elif method.name != "2:4" and target is None:
        target = int(schedule[-1])
    total = len(schedule)
    masks = method.initial_masks(model)
    for k in range(done, total):
        step_target = int(schedule[k])
        masks, extra = method.cut(model, spec, step_target, masks)
        metrics: dict[str, Any] = {}
        if finetune_fn is not None:
            model, metrics = _finetune(model, method, spec, step_target, masks, finetune_fn)
        else:
            method.hold(model, spec, step_target, masks)
        model.eval()
        entry = {
            "method": method.name, "target": int(target) if target is not None else None,
            "step": k + 1, "steps": total, "step_target": step_target,
            "params_embedding": embedding_params(model), "params_nonzero": embedding_params(model, nonzero=True),
            **extra, **metrics,
        }
        history.append(entry)
        if on_step is not None:
            on_step(model, entry)
    arch = None if method.keeps_architecture else extract_arch(model)
    return model, arch, history


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Nonzero/total of the prunable backbone weights, and the embedding counts."""
    params = sparse_targets(model)
    total = sum(p.numel() for p in params.values())
    nz = sum(int(torch.count_nonzero(p)) for p in params.values())
    return {"prunable_total": int(total), "prunable_nonzero": int(nz), "sparsity": 1 - nz / max(1, total),
            "params_embedding": embedding_params(model), "params_nonzero": embedding_params(model, nonzero=True)}
