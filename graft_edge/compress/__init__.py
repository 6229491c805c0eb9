"""Compression of GraFT models to a parameter budget: structured (Torch-Pruning), unstructured, 2:4.

Library entry point::

    from graft_edge.compress import prune_to_target
    model, arch, history = prune_to_target(model, 60_000_000, PruneSpec(method="structured"))
    save_checkpoint(path, model, cfg, arch=arch, history=history)   # reload: checkpoint.load_model

Methods are objects (`get_method("2:4")`, `compress.methods`): each knows what it counts, its floor, its schedule,
its cut and how it holds the cut while finetuning. Building blocks, Torch-Pruning style (an importance object, a
pruner with `floor()` and `step(target)`):
`StructuredPruner` (heads / head dims + MLP and encoder feed-forward channels, exact counts),
`UnstructuredPruner` (global L1 over backbone qkv/proj/fc1/fc2), `SemiStructuredPruner` (2:4),
`L1Importance`. The pruned widths are persisted by `graft_edge.model.arch`, so loading a pruned
checkpoint needs no pruning library; the resumable prune run is `graft_edge.workflows.prune`.
"""
from graft_edge.compress.loop import plan_prune, prune_to_target, sparsity_report
from graft_edge.compress.methods import METHODS, PruneMethod, PruneSpec, check_compatible, get_method, previous_methods
from graft_edge.compress.sparse import (
    L1Importance,
    SemiStructuredPruner,
    UnstructuredPruner,
    apply_masks,
    is_nm_sparse,
    mask_hook,
    masks_from_zeros,
    nm_violations,
    sparse_targets,
)
from graft_edge.compress.structured import ATTN_UNITS, StructuredPruner, default_importance
from graft_edge.compress.targets import check_target, parse_targets, plan_schedule, resolve_target

__all__ = [
    "ATTN_UNITS", "L1Importance", "METHODS", "PruneMethod", "PruneSpec", "SemiStructuredPruner", "StructuredPruner",
    "UnstructuredPruner", "apply_masks", "check_compatible", "check_target", "default_importance", "get_method",
    "is_nm_sparse", "mask_hook", "masks_from_zeros", "nm_violations", "parse_targets", "plan_prune", "plan_schedule",
    "previous_methods", "prune_to_target", "resolve_target", "sparse_targets", "sparsity_report",
]
