"""Weight-level pruning of the backbone: the paper's global L1 magnitude pruning, and 2:4 semi-structured.

Both act on the same weights (paper §5.4: "query, key, and value along with the projection layers
and MLPs"): every backbone block's `attn.qkv`, `attn.proj`, `mlp.fc1` and `mlp.fc2` weight matrices
(biases, norms, embeddings and the fusion encoders are left dense).

Masks are plain boolean tensors kept beside the model: `apply_masks` re-zeroes pruned weights (call it
after every optimiser step while finetuning) and the saved model simply holds zeros, so no
`torch.nn.utils.prune` parametrisation ever reaches a checkpoint. A mask is recoverable from the
zeros themselves (`masks_from_zeros`), which is how a resumed run picks up.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from graft_edge.errors import GraftError
from graft_edge.model import embedding_params
from graft_edge.model.arch import backbone_blocks

Masks = dict[str, torch.Tensor]


def sparse_targets(model: nn.Module) -> dict[str, nn.Parameter]:
    """The prunable weights by parameter name: backbone qkv, attn proj, MLP fc1 and fc2."""
    out: dict[str, nn.Parameter] = {}
    for i, blk in enumerate(backbone_blocks(model)):
        for path in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            mod: nn.Module | None = blk
            for part in path.split("."):
                mod = getattr(mod, part, None)
            if not isinstance(mod, nn.Linear):
                raise GraftError(f"backbone.blocks.{i}.{path} is not a Linear layer; weight pruning expects a timm ViT")
            out[f"backbone.blocks.{i}.{path}.weight"] = mod.weight
    return out


def masks_from_zeros(model: nn.Module) -> Masks:
    """Masks that keep every currently nonzero prunable weight."""
    return {name: (p.detach() != 0) for name, p in sparse_targets(model).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every masked-out weight (use as the finetune `after_step` hook)."""
    params = sparse_targets(model)
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


def mask_hook(masks: Masks):
    """An `after_step(model)` callable that re-applies `masks`."""

    def after_step(model: nn.Module) -> None:
        apply_masks(model, masks)

    return after_step


def prunable_nonzero(model: nn.Module) -> int:
    """Nonzero weights among the prunable ones (the most weight pruning can still remove)."""
    return int(sum(int(torch.count_nonzero(p.detach())) for p in sparse_targets(model).values()))


class L1Importance:
    """Weight-level magnitude importance |w| (the paper's global L1 criterion)."""

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().abs().float()


class UnstructuredPruner:
    """Global magnitude pruning over the prunable weights; `step(target)` prunes down to `target` nonzero
    parameters of the embedding model.

    >>> pruner = UnstructuredPruner(model)                      # masks from the current zeros
    >>> pruner.step(embedding_params(model, nonzero=True) - pruner.remaining() // 5)   # one paper round: 20%
    >>> mask_hook(pruner.masks)                                 # re-applies the masks inside finetuning
    """

    def __init__(self, model: nn.Module, importance: L1Importance | None = None, masks: Masks | None = None) -> None:
        self.model = model
        self.importance = importance or L1Importance()
        self.masks = masks if masks is not None else masks_from_zeros(model)

    def remaining(self) -> int:
        """Prunable weights still kept."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def floor(self) -> int:
        """The smallest nonzero count reachable: every prunable weight removed."""
        return embedding_params(self.model, nonzero=True) - prunable_nonzero(self.model)

    def step(self, target: int | None = None) -> Masks:
        """Prune down to `target` nonzero embedding parameters; returns the masks (re-apply them while finetuning)."""
        if target is None:
            raise GraftError("UnstructuredPruner.step needs a target (nonzero parameters to keep)")
        self.remove(embedding_params(self.model, nonzero=True) - int(target))
        return self.masks

    @torch.no_grad()
    def remove(self, amount: int) -> int:
        """Remove exactly `amount` kept weights, smallest importance first (ties broken by position)."""
        amount = int(amount)
        if amount <= 0:
            return 0
        params = sparse_targets(self.model)
        if amount > self.remaining():
            raise GraftError(f"cannot remove {amount:,} weights: only {self.remaining():,} prunable weights remain")
        scores = {n: self.importance(params[n]) for n in self.masks}
        kept = torch.cat([scores[n][self.masks[n]] for n in self.masks])
        thr = torch.kthvalue(kept.cpu(), amount).values.item()
        del kept
        below = {n: self.masks[n] & (scores[n] < thr) for n in self.masks}
        need_ties = amount - int(sum(int(b.sum()) for b in below.values()))
        for n in self.masks:
            drop = below[n]
            if need_ties > 0:
                ties = (self.masks[n] & (scores[n] == thr)).flatten()
                idx = torch.nonzero(ties).flatten()[:need_ties]
                if len(idx):
                    flat = drop.flatten().clone()
                    flat[idx] = True
                    drop = flat.view_as(drop)
                    need_ties -= len(idx)
            self.masks[n] = self.masks[n] & ~drop
        self.apply()
        return amount

    def apply(self) -> None:
        """Zero the pruned weights in the model."""
        apply_masks(self.model, self.masks)


class SemiStructuredPruner:
    """N:M sparsity along the input dimension: in every group of M consecutive input weights of a
    row, keep the N largest-magnitude ones (2:4 by default, the pattern of NVIDIA sparse tensor cores)."""

    def __init__(self, model: nn.Module, n: int = 2, m: int = 4, importance: L1Importance | None = None) -> None:
        if not 0 < n < m:
            raise GraftError(f"{n}:{m} sparsity: expected 0 < N < M")
        self.model, self.n, self.m = model, int(n), int(m)
        self.importance = importance or L1Importance()
        for name, p in sparse_targets(model).items():
            if p.shape[-1] % self.m:
                raise GraftError(f"{name}: input width {p.shape[-1]} is not a multiple of {self.m}; "
                                 f"{self.n}:{self.m} sparsity needs groups of {self.m}")
        self.masks: Masks = {}

    @torch.no_grad()
    def plan(self) -> Masks:
        """The N:M masks (nothing is changed)."""
        masks = {}
        for name, p in sparse_targets(self.model).items():
            score = self.importance(p).reshape(-1, self.m)
            keep = torch.zeros_like(score, dtype=torch.bool)
            keep.scatter_(1, torch.topk(score, self.n, dim=1).indices, True)
            masks[name] = keep.view_as(p) & (p.detach() != 0)
        return masks

    def removed_by(self, masks: Masks) -> int:
        """How many currently nonzero weights the masks would remove."""
        params = sparse_targets(self.model)
        return int(sum(int(torch.count_nonzero(params[n].detach())) - int(m.sum()) for n, m in masks.items()))

    def floor(self) -> int:
        """The nonzero count the N:M pattern leaves (its size is implied, so it is also its only target)."""
        return embedding_params(self.model, nonzero=True) - self.removed_by(self.plan())

    def step(self, target: int | None = None) -> Masks:
        """Apply the N:M masks (the size is implied: `target` is not used); returns them (re-apply them during
        finetuning)."""
        self.masks = self.plan()
        apply_masks(self.model, self.masks)
        return self.masks


def nm_violations(model: nn.Module, n: int = 2, m: int = 4, names: Iterable[str] | None = None) -> dict[str, int]:
    """Per prunable weight, the number of M-groups with more than N nonzeros (empty dict: pattern holds)."""
    bad = {}
    params = sparse_targets(model)
    for name in names or params:
        p = params[name].detach()
        if p.shape[-1] % m:
            bad[name] = -1
            continue
        count = int(((p.reshape(-1, m) != 0).sum(1) > n).sum())
        if count:
            bad[name] = count
    return bad


def is_nm_sparse(model: nn.Module, n: int = 2, m: int = 4) -> bool:
    """True when every prunable weight already follows the N:M pattern."""
    return not nm_violations(model, n, m)
