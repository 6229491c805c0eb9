"""Structured magnitude pruning of GraFT with Torch-Pruning: attention heads (or head dims), MLP and
encoder feed-forward channels, to an exact parameter budget.

What is pruned, per step, with one uniform keep ratio (then a fine adjustment):
  * every backbone block's attention: whole heads (default) or the same number of dims in every head,
    through the qkv -> proj dependency group (q, k and v pruned together);
  * every backbone block's MLP hidden channels (fc1 out / fc2 in), rounded to `round_to`;
  * every fusion encoder's feed-forward channels (linear1 out / linear2 in), rounded to `round_to`.
Never touched: the embedding width (patch embed, cls/pos embeddings, fusion token, norms), the
encoders' MultiheadAttention (it can only shrink through the shared embedding width) and the head.

Which channels go is decided by a Torch-Pruning importance (default: group L1 magnitude,
`tp.importance.GroupMagnitudeImportance(p=1)`) over the dependency group; how many go is decided
here, analytically, so the resulting count is known before anything is cut: a bisection on the global
ratio, then a greedy add-back of the cheapest width increments to fill the remaining budget. The
count never exceeds the step's target and lands within one increment (8 MLP channels of one block,
about 12K parameters on DeiT-B) below it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch_pruning as tp
from torch import nn

from graft_edge.errors import GraftError
from graft_edge.inputs import random_images
from graft_edge.model import embedding_params
from graft_edge.model.arch import (
    backbone_blocks,
    check_attention,
    check_mlp,
    encoder_layers,
    extract_arch,
    set_attention_widths,
)

ATTN_UNITS = ("heads", "head_dims")
_WRAPPED = (nn.Linear, nn.LayerNorm, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm,
            nn.MultiheadAttention, nn.Embedding, nn.GroupNorm, nn.PReLU)


@dataclass
class PrunableLayer:
    """One independently prunable width: a block's attention, a block's MLP or an encoder's feed-forward."""

    name: str  # e.g. "backbone.blocks.3.attn"
    kind: str  # "heads" | "head_dims" | "mlp" | "ff"
    width: int  # current width, in units (heads, dims per head, or channels)
    unit_cost: int  # parameters removed per unit
    granularity: int  # allowed widths: multiples of this (or the current width)
    minimum: int  # smallest allowed width
    root: nn.Linear  # the Linear whose output channels root the Torch-Pruning group
    partner: nn.Linear  # the Linear whose input channels follow
    owner: nn.Module  # the attention module (attribute updates) or the MLP / encoder layer

    def width_at(self, ratio: float) -> int:
        """The width after removing `ratio` of it, rounded to the granularity and clamped to [minimum, width]."""
        if ratio <= 0:
            return self.width
        g = self.granularity
        w = int(round(self.width * (1.0 - ratio) / g)) * g
        return max(self.minimum, min(self.width, w))

    def next_width(self, w: int) -> int:
        """The next allowed width above `w` (capped at the current width)."""
        return min(self.width, (w // self.granularity + 1) * self.granularity)


def default_importance() -> tp.importance.Importance:
    """Group L1 magnitude over the whole dependency group (qkv+proj, fc1+fc2, linear1+linear2)."""
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)


def example_inputs(model: nn.Module, batch: int = 1) -> dict[str, torch.Tensor]:
    """Random inputs for every modality of the model at its configured size (for graph tracing; the global RNG
    is left alone, so tracing does not change what training draws next)."""
    dev = next(model.parameters()).device
    return {m: torch.from_numpy(x).to(dev) for m, x in random_images(model.modalities, model.cfg.img_size, batch).items()}


@torch.no_grad()
def keep_temperature(attn: nn.Module, old_head_dim: int, new_head_dim: int) -> None:
    """Fold sqrt(new/old) into the query projection of a head-dim-pruned attention.

    Attention divides q.k by sqrt(head_dim) (timm's fused path always uses the current head size), so
    removing head dimensions would sharpen every softmax by sqrt(old/new); scaling q by sqrt(new/old)
    keeps the logits of the kept dimensions exactly what they were.
    """
    factor = math.sqrt(new_head_dim / old_head_dim)
    rows = attn.qkv.out_features // 3  # q is the first third of the fused projection
    attn.qkv.weight[:rows].mul_(factor)
    if attn.qkv.bias is not None:
        attn.qkv.bias[:rows].mul_(factor)


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters held directly by non-standard modules (cls/pos embeddings, fusion token, layer scales).

    Declared to Torch-Pruning (pruning dim = last) so it does not warn; none of them is ever pruned,
    because the embedding width is never a pruning root.
    """
    out = []
    for module in model.modules():
        if isinstance(module, _WRAPPED):
            continue
        for p in module._parameters.values():
            if p is not None:
                out.append((p, p.dim() - 1))
    return out


class StructuredPruner:
    """Torch-Pruning-style pruner: an importance object, a target, and `step()`.

    >>> pruner = StructuredPruner(model, round_to=8)
    >>> pruner.floor()                     # smallest reachable size
    >>> widths = pruner.plan(60_000_000)   # {layer name: new width}, count <= target
    >>> pruner.step(60_000_000)            # cut the least important units; returns the new arch
    """

    def __init__(self, model: nn.Module, importance: tp.importance.Importance | None = None, round_to: int = 8,
                 attn_unit: str = "heads", prune_attention: bool = True, prune_mlp: bool = True,
                 prune_encoders: bool = True, inputs: Mapping[str, torch.Tensor] | None = None) -> None:
        if attn_unit not in ATTN_UNITS:
            raise GraftError(f"attention pruning unit {attn_unit!r}: expected one of {', '.join(ATTN_UNITS)}")
        if int(round_to) < 1:
            raise GraftError(f"round_to {round_to}: expected a positive integer")
        self.model = model
        self.importance = importance or default_importance()
        self.round_to = int(round_to)
        self.attn_unit = attn_unit
        self.prune_attention, self.prune_mlp, self.prune_encoders = prune_attention, prune_mlp, prune_encoders
        self.inputs = dict(inputs) if inputs is not None else None
        self.layers = self._collect()

    # ------------------------------------------------------------ layers and counting

    def _collect(self) -> list[PrunableLayer]:
        layers: list[PrunableLayer] = []
        R = self.round_to
        for i, blk in enumerate(backbone_blocks(self.model)):
            attn, mlp = blk.attn, blk.mlp
            check_attention(attn, f"backbone.blocks.{i}.attn")
            check_mlp(mlp, f"backbone.blocks.{i}.mlp")
            if self.prune_attention:
                per_channel = 3 * (attn.qkv.in_features + (attn.qkv.bias is not None)) + attn.proj.out_features
                nh, hd = int(attn.num_heads), int(attn.head_dim)
                if self.attn_unit == "heads":
                    layers.append(PrunableLayer(f"backbone.blocks.{i}.attn", "heads", nh, hd * per_channel, 1, 1,
                                                attn.qkv, attn.proj, attn))
                else:
                    if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
                        raise GraftError(f"backbone.blocks.{i}.attn: head_dim pruning with q/k norm is not supported; "
                                         "prune whole heads instead")
                    layers.append(PrunableLayer(f"backbone.blocks.{i}.attn", "head_dims", hd, nh * per_channel, R,
                                                min(hd, R), attn.qkv, attn.proj, attn))
            if self.prune_mlp:
                per_channel = mlp.fc1.in_features + (mlp.fc1.bias is not None) + mlp.fc2.out_features
                w = int(mlp.fc1.out_features)
                layers.append(PrunableLayer(f"backbone.blocks.{i}.mlp", "mlp", w, per_channel, R, min(w, R),
                                            mlp.fc1, mlp.fc2, mlp))
        if self.prune_encoders:
            for name, enc in encoder_layers(self.model).items():
                per_channel = enc.linear1.in_features + (enc.linear1.bias is not None) + enc.linear2.out_features
                w = int(enc.linear1.out_features)
                layers.append(PrunableLayer(f"fusion.encoders.{name}.ff", "ff", w, per_channel, R, min(w, R),
                                            enc.linear1, enc.linear2, enc))
        return layers

    def params(self) -> int:
        """Current parameters of the deployed embedding model."""
        return embedding_params(self.model)

    def count(self, widths: Mapping[str, int]) -> int:
        """Embedding parameters the model would have with these widths (exact; nothing is cut)."""
        removed = sum((layer.width - widths.get(layer.name, layer.width)) * layer.unit_cost for layer in self.layers)
        return self.params() - removed

    def widths_at(self, ratio: float) -> dict[str, int]:
        """Every layer's width for one uniform pruning ratio."""
        return {layer.name: layer.width_at(ratio) for layer in self.layers}

    def floor(self) -> int:
        """The smallest reachable size: 1 head (or `round_to` dims) and `round_to` channels per layer."""
        return self.count(self.widths_at(1.0))

    # ------------------------------------------------------------ the search

    def plan(self, target: int) -> dict[str, int]:
        """Widths whose count is <= target and as close to it as the granularity allows.

        Bisection on the global ratio (the count is monotone in it), then a greedy add-back of the
        cheapest increments, always to the layer kept least so far, while the budget allows.
        """
        target = int(target)
        current = self.params()
        if target >= current:
            return {layer.name: layer.width for layer in self.layers}
        floor = self.floor()
        if target < floor:
            raise GraftError(f"target {target:,} is below the smallest structured size {floor:,} "
                             f"(1 head and {self.round_to} channels per layer)")
        lo, hi = 0.0, 1.0  # count(lo) > target >= count(hi)
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.count(self.widths_at(mid)) <= target:
                hi = mid
            else:
                lo = mid
        widths = self.widths_at(hi)
        slack = target - self.count(widths)
        by_name = {layer.name: layer for layer in self.layers}
        while True:
            best, best_key = None, None
            for name, w in widths.items():
                layer = by_name[name]
                if w >= layer.width:
                    continue
                cost = (layer.next_width(w) - w) * layer.unit_cost
                if cost > slack:
                    continue
                key = (w / layer.width, cost)
                if best_key is None or key < best_key:
                    best, best_key = name, key
            if best is None:
                break
            layer = by_name[best]
            new = layer.next_width(widths[best])
            slack -= (new - widths[best]) * layer.unit_cost
            widths[best] = new
        return widths

    # ------------------------------------------------------------ the cut

    def build_graph(self) -> tp.DependencyGraph:
        """Trace the model (eval mode, grads on) into a Torch-Pruning dependency graph."""
        model = self.model
        inputs = self.inputs if self.inputs is not None else example_inputs(model)
        was_training = model.training
        frozen = [p for p in model.parameters() if not p.requires_grad]
        model.eval()
        try:
            for p in frozen:
                p.requires_grad_(True)
            with torch.enable_grad():
                dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=inputs, forward_fn=lambda m, x: m(x).embedding,
                    unwrapped_parameters=unwrapped_parameters(model), verbose=False,
                )
        finally:
            for p in frozen:
                p.requires_grad_(False)
            model.train(was_training)
        return dg

    def _group(self, dg: tp.DependencyGraph, layer: PrunableLayer, idxs: list[int]) -> Any:
        group = dg.get_pruning_group(layer.root, tp.prune_linear_out_channels, idxs)
        allowed = {layer.root, layer.partner}
        real = set(self.model.modules())
        for dep, _ in group:
            mod = dep.target.module
            if isinstance(mod, nn.Parameter) or (isinstance(mod, nn.Module) and mod in real and mod not in allowed):
                raise GraftError(f"{layer.name}: Torch-Pruning couples it with {dep.target.name}; refusing to prune "
                                 "a layer whose group leaves the block")
        return group

    def _scores(self, dg: tp.DependencyGraph, layer: PrunableLayer) -> torch.Tensor:
        group = self._group(dg, layer, list(range(layer.root.out_features)))
        scores = self.importance(group)
        if scores is None:
            raise GraftError(f"{layer.name}: the importance criterion returned no scores")
        return scores.detach().float().cpu()

    @torch.no_grad()
    def _drop_indices(self, layer: PrunableLayer, scores: torch.Tensor, new: int) -> list[int]:
        if layer.kind in ("mlp", "ff"):
            return sorted(torch.argsort(scores)[: layer.width - new].tolist())
        attn = layer.owner
        nh, hd = int(attn.num_heads), int(attn.head_dim)
        ad = nh * hd
        per = scores.view(3, nh, hd).sum(0)  # (heads, dims): q, k and v of one channel go together
        if layer.kind == "heads":
            heads = torch.argsort(per.sum(1))[: nh - new].tolist()
            drop = [(h, d) for h in heads for d in range(hd)]
        else:
            drop = [(h, d) for h in range(nh) for d in torch.argsort(per[h])[: hd - new].tolist()]
        return sorted(s * ad + h * hd + d for s in range(3) for h, d in drop)

    def step(self, target: int | None = None, widths: Mapping[str, int] | None = None) -> dict[str, Any]:
        """Prune to `target` (or to explicit `widths`); returns the new arch. The count is checked exactly."""
        if widths is None:
            if target is None:
                raise GraftError("StructuredPruner.step needs a target or widths")
            widths = self.plan(target)
        expected = self.count(widths)
        if any(widths.get(layer.name, layer.width) != layer.width for layer in self.layers):
            dg = self.build_graph()
            for layer in self.layers:
                new = int(widths.get(layer.name, layer.width))
                if new == layer.width:
                    continue
                if not layer.minimum <= new <= layer.width:
                    raise GraftError(f"{layer.name}: width {new} outside [{layer.minimum}, {layer.width}]")
                drop = self._drop_indices(layer, self._scores(dg, layer), new)
                self._group(dg, layer, drop).prune()
                if layer.kind == "heads":
                    set_attention_widths(layer.owner, new, layer.owner.head_dim)
                elif layer.kind == "head_dims":
                    keep_temperature(layer.owner, layer.owner.head_dim, new)
                    set_attention_widths(layer.owner, layer.owner.num_heads, new)
        self.layers = self._collect()
        got = self.params()
        if got != expected:  # the analytic count and the real cut disagree: a bug, never ship it silently
            raise RuntimeError(f"structured pruning produced {got:,} parameters, planned {expected:,}")
        return extract_arch(self.model)
