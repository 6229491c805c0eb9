"""Compression of GraFT models to a parameter budget: structured (Torch-Pruning), unstructured, 2:4.

Library entry point::

    from graft_edge.compress import prune_to_target
    model, arch, history = prune_to_target(model, 60_000_000, PruneSpec(method="structured"))
    save_checkpoint(path, model, cfg, arch=arch, history=history)   # reload: checkpoint.load_model

Building blocks, Torch-Pruning style (an importance object, a pruner, `step()`):
`StructuredPruner` (heads / head dims + MLP and encoder feed-forward channels, exact counts),
`UnstructuredPruner` (global L1 over backbone qkv/proj/fc1/fc2), `SemiStructuredPruner` (2:4),
`L1Importance`. The pruned widths are persisted by `graft_edge.model.arch`, so loading a pruned
checkpoint needs no pruning library; the resumable prune run is `graft_edge.workflows.prune`.
"""
from graft_edge.compress.loop import PruneSpec, method_floor, plan_prune, prune_to_target, sparsity_report
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
from graft_edge.compress.targets import (
    METHODS,
    check_compatible,
    check_target,
    counted_size,
    normalize_method,
    plan_schedule,
    previous_methods,
    resolve_target,
)

__all__ = [
    "ATTN_UNITS", "L1Importance", "METHODS", "PruneSpec", "SemiStructuredPruner", "StructuredPruner", "UnstructuredPruner",
    "apply_masks", "check_compatible", "check_target", "counted_size",
    "default_importance", "is_nm_sparse", "mask_hook", "masks_from_zeros", "method_floor",
    "nm_violations", "normalize_method", "plan_prune", "plan_schedule", "previous_methods", "prune_to_target",
    "resolve_target", "sparse_targets", "sparsity_report",
]
