"""The shared timm ViT backbone: creation, pretrained weights (hub or local file), token output."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from graft_edge.config import ModelConfig
from graft_edge.errors import GraftError


def create_backbone(cfg: ModelConfig, pretrained: bool | None = None) -> nn.Module:
    """A timm ViT without its classifier; `pretrained` overrides cfg.pretrained (loading skips it)."""
    use_pretrained = cfg.pretrained if pretrained is None else pretrained
    if cfg.backbone not in timm.list_models():
        raise GraftError(f"unknown timm backbone {cfg.backbone!r}: expected a timm ViT name such as deit_base_patch16_224")
    kwargs = dict(cfg.backbone_args)
    kwargs.update(num_classes=0, img_size=tuple(cfg.img_size))
    if use_pretrained and cfg.pretrained_file:
        path = Path(cfg.pretrained_file)
        if not path.is_file():
            raise GraftError(f"pretrained weights file {path} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        model = timm.create_model(cfg.backbone, pretrained=use_pretrained, **kwargs)
    except GraftError:
        raise
    except Exception as exc:  # hub unreachable, bad file, bad kwargs
        if use_pretrained:
            source = cfg.pretrained_file or "the timm hub"
            raise GraftError(
                f"could not load pretrained weights for {cfg.backbone} from {source} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                "pass --pretrained-file FILE or use --no-pretrained"
            ) from None
        raise GraftError(f"cannot build backbone {cfg.backbone} with {dict(cfg.backbone_args)}: {exc}") from None
    if not hasattr(model, "forward_features") or not hasattr(model, "embed_dim"):
        raise GraftError(f"backbone {cfg.backbone!r} is not a timm ViT (no forward_features/embed_dim)")
    return model


def backbone_tokens(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All output tokens after the final norm: (B, 3, H, W) -> (B, N, D) (cls [+dist] + patches)."""
    return backbone.forward_features(x)
