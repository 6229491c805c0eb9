"""Pruned-architecture persistence: per-layer widths out of a model, and back into a fresh dense one.

A structured-pruned GraFT differs from the dense model of its config only in a few widths:
per backbone block the attention head count / head size and the MLP hidden width, and per
modality encoder the feed-forward width. `extract_arch` records them as plain ints and strings
(safe under `torch.load(weights_only=True)`); `apply_arch` reshapes a freshly built dense model
to those widths so `load_state_dict(strict=True)` of the pruned weights works. Every checkpoint,
pruned or not, is therefore reloaded by the same loader (`graft_edge.checkpoint.load_model`).

Example arch (a 2-block backbone, one encoder)::

    {"version": 1, "embed_dim": 64,
     "blocks": [{"num_heads": 3, "head_dim": 16, "mlp_hidden": 136}, ...],
     "encoders": {"rgb": {"dim_feedforward": 72}}}
"""
from __future__ import annotations

from typing import Any

from torch import nn

from graft_edge.errors import GraftError

ARCH_VERSION = 1


# ---------------------------------------------------------------- module access

def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of the shared timm ViT backbone."""
    blocks = getattr(model.backbone, "blocks", None)
    if blocks is None:
        raise GraftError(f"backbone {type(model.backbone).__name__} has no `blocks`: not a timm ViT")
    return list(blocks)


def encoder_layers(model: nn.Module) -> dict[str, nn.TransformerEncoderLayer]:
    """The fusion encoders by name (one per modality, or 'joint' for the vanilla fusions)."""
    return dict(model.fusion.encoders.items())


def check_attention(attn: nn.Module, where: str) -> None:
    """Refuse attention variants whose widths this module cannot rewrite (fused-qkv timm Attention only)."""
    ok = (isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None), nn.Linear)
          and hasattr(attn, "num_heads") and hasattr(attn, "head_dim")
          and getattr(attn, "gate", None) is None and isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity))
    if not ok:
        raise GraftError(f"{where}: attention type {type(attn).__name__} is not supported by structured pruning "
                         "(expected timm's Attention with a fused qkv projection)")


def check_mlp(mlp: nn.Module, where: str) -> None:
    """Refuse MLP variants other than timm's plain fc1 -> act -> fc2 Mlp."""
    ok = (isinstance(getattr(mlp, "fc1", None), nn.Linear) and isinstance(getattr(mlp, "fc2", None), nn.Linear)
          and mlp.fc1.out_features == mlp.fc2.in_features
          and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity))
    if not ok:
        raise GraftError(f"{where}: MLP type {type(mlp).__name__} is not supported by structured pruning "
                         "(expected timm's Mlp: fc1 -> act -> fc2)")


def set_attention_widths(attn: nn.Module, num_heads: int, head_dim: int) -> None:
    """Make a timm Attention's bookkeeping match its (pruned) qkv/proj shapes.

    timm's forward reshapes with `num_heads`, `head_dim` and `attn_dim`; a stale `attn_dim` breaks it.
    `scale` follows the head size, as `scaled_dot_product_attention` (the fused path) does implicitly.
    """
    attn.num_heads = int(num_heads)
    attn.head_dim = int(head_dim)
    attn.attn_dim = int(num_heads) * int(head_dim)
    attn.scale = float(head_dim) ** -0.5


# ---------------------------------------------------------------- extract / apply

def extract_arch(model: nn.Module) -> dict[str, Any]:
    """Per-layer widths of a (possibly pruned) GraFT, as plain ints/strings."""
    blocks = []
    for i, blk in enumerate(backbone_blocks(model)):
        attn, mlp = blk.attn, blk.mlp
        check_attention(attn, f"backbone.blocks.{i}.attn")
        check_mlp(mlp, f"backbone.blocks.{i}.mlp")
        nh, hd = int(attn.num_heads), int(attn.head_dim)
        if attn.qkv.out_features != 3 * nh * hd or attn.proj.in_features != nh * hd:
            raise GraftError(f"backbone.blocks.{i}.attn: qkv/proj shapes disagree with num_heads={nh}, head_dim={hd}")
        blocks.append({"num_heads": nh, "head_dim": hd, "mlp_hidden": int(mlp.fc1.out_features)})
    encoders = {name: {"dim_feedforward": int(enc.linear1.out_features)} for name, enc in encoder_layers(model).items()}
    return {"version": ARCH_VERSION, "embed_dim": int(model.embed_dim), "blocks": blocks, "encoders": encoders}


def _new_linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)


def _as_width(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GraftError(f"pruned architecture: {where}={value!r} is not a positive integer")
    return value


def validate_arch(model: nn.Module, arch: dict[str, Any]) -> None:
    """Check that `arch` describes this model's layers (same block count, encoders, embedding width)."""
    if not isinstance(arch, dict) or "blocks" not in arch or "encoders" not in arch:
        raise GraftError("pruned architecture is malformed: expected a dict with 'blocks' and 'encoders'")
    if arch.get("version", ARCH_VERSION) != ARCH_VERSION:
        raise GraftError(f"pruned architecture version {arch.get('version')!r} is not supported (expected {ARCH_VERSION})")
    blocks = backbone_blocks(model)
    if len(arch["blocks"]) != len(blocks):
        raise GraftError(f"pruned architecture has {len(arch['blocks'])} backbone blocks, the model has {len(blocks)}")
    if "embed_dim" in arch and arch["embed_dim"] != model.embed_dim:
        raise GraftError(f"pruned architecture has embed_dim {arch['embed_dim']}, the model has {model.embed_dim}")
    names = set(encoder_layers(model))
    if set(arch["encoders"]) != names:
        raise GraftError(f"pruned architecture encoders {sorted(arch['encoders'])} do not match the model's {sorted(names)}")


def apply_arch(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """Reshape a freshly built dense model in place to the widths of `arch` (new, uninitialised Linears).

    Meant to be followed by `load_state_dict(strict=True)` with the pruned weights.
    """
    validate_arch(model, arch)
    for i, (blk, spec) in enumerate(zip(backbone_blocks(model), arch["blocks"])):
        attn, mlp = blk.attn, blk.mlp
        check_attention(attn, f"backbone.blocks.{i}.attn")
        check_mlp(mlp, f"backbone.blocks.{i}.mlp")
        nh = _as_width(spec.get("num_heads"), f"blocks[{i}].num_heads")
        hd = _as_width(spec.get("head_dim"), f"blocks[{i}].head_dim")
        hidden = _as_width(spec.get("mlp_hidden"), f"blocks[{i}].mlp_hidden")
        if hd != attn.head_dim and not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            raise GraftError(f"backbone.blocks.{i}.attn: head_dim pruning with q/k norm is not supported")
        if (nh, hd) != (attn.num_heads, attn.head_dim):
            dim_in, dim_out = attn.qkv.in_features, attn.proj.out_features
            attn.qkv = _new_linear(attn.qkv, dim_in, 3 * nh * hd)
            attn.proj = _new_linear(attn.proj, nh * hd, dim_out)
            set_attention_widths(attn, nh, hd)
        if hidden != mlp.fc1.out_features:
            mlp.fc1 = _new_linear(mlp.fc1, mlp.fc1.in_features, hidden)
            mlp.fc2 = _new_linear(mlp.fc2, hidden, mlp.fc2.out_features)
    for name, enc in encoder_layers(model).items():
        ff = _as_width(arch["encoders"][name].get("dim_feedforward"), f"encoders[{name}].dim_feedforward")
        if ff != enc.linear1.out_features:
            enc.linear1 = _new_linear(enc.linear1, enc.linear1.in_features, ff)
            enc.linear2 = _new_linear(enc.linear2, ff, enc.linear2.out_features)
    return model


def arch_summary(arch: dict[str, Any] | None) -> str:
    """One line, e.g. 'heads 12x7, head_dim 64, mlp 1688-1696, ff 1128' (or 'dense')."""
    if not arch:
        return "dense"
    heads = [b["num_heads"] for b in arch["blocks"]]
    hds = sorted({b["head_dim"] for b in arch["blocks"]})
    mlps = [b["mlp_hidden"] for b in arch["blocks"]]
    ffs = [e["dim_feedforward"] for e in arch["encoders"].values()]

    def span(v: list[int]) -> str:
        return str(min(v)) if min(v) == max(v) else f"{min(v)}-{max(v)}"

    return (f"heads {span(heads)}, head_dim {span(hds)}, mlp {span(mlps)}"
            + (f", ff {span(ffs)}" if ffs else ""))
