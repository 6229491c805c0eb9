"""The shared timm ViT backbone: creation, pretrained weights (hub or local file), token output."""
from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
from torch import nn

from graft_edge.config import ModelConfig
from graft_edge.errors import GraftError, one_line


def create_backbone(cfg: ModelConfig, pretrained: bool | None = None) -> nn.Module:
    """A timm ViT without its classifier; `pretrained` overrides cfg.pretrained (loading skips it)."""
    use_pretrained = cfg.pretrained if pretrained is None else pretrained
    if cfg.backbone not in timm.list_models():
        raise GraftError(f"unknown timm backbone {cfg.backbone!r}: expected a timm ViT name such as deit_base_distilled_patch16_224")
    kwargs = dict(cfg.backbone_args)
    kwargs.update(num_classes=0, img_size=tuple(cfg.img_size))
    local = Path(cfg.pretrained_file) if use_pretrained and cfg.pretrained_file else None
    if local is not None and not local.is_file():
        raise GraftError(f"pretrained weights file {local} does not exist")
    try:
        model = timm.create_model(cfg.backbone, pretrained=use_pretrained and local is None, **kwargs)
    except GraftError:
        raise
    except Exception as exc:  # hub unreachable, bad file, bad kwargs
        if use_pretrained:
            source = cfg.pretrained_file or "the timm hub"
            raise GraftError(
                f"could not load pretrained weights for {cfg.backbone} from {source} "
                f"({one_line(exc, 160)}); "
                "pass --pretrained-file FILE or use --no-pretrained"
            ) from None
        raise GraftError(f"cannot build backbone {cfg.backbone} with {dict(cfg.backbone_args)}: {exc}") from None
    if not hasattr(model, "forward_features") or not hasattr(model, "embed_dim"):
        raise GraftError(f"backbone {cfg.backbone!r} is not a timm ViT (no forward_features/embed_dim)")
    if local is not None:
        load_backbone_file(model, local, cfg.backbone)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (weights_only: no pickled code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def load_backbone_file(model: nn.Module, path: Path, name: str) -> None:
    """Local backbone weights: torch / safetensors checkpoints through timm's checkpoint filter, or timm's .npz.

    The filter adapts an ImageNet checkpoint to this model (position embeddings resampled to the input
    size, distillation tokens); the source's classifier heads are dropped; every backbone weight must be there.
    """
    try:
        if path.suffix == ".npz":  # big_vision / JAX weights: timm's own ViT loader
            model.load_pretrained(str(path))
            return
        state = _read_state_dict(path)
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, model)
    except Exception as exc:
        raise GraftError(f"pretrained weights file {path} cannot be read as {name} weights "
                         f"({one_line(exc, 160)})") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise GraftError(f"pretrained weights file {path} does not fit {name}: no {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    wrong = next((k for k in own if tuple(state[k].shape) != tuple(own[k].shape)), None)
    if wrong:
        raise GraftError(f"pretrained weights file {path} does not fit {name}: {wrong} is "
                         f"{tuple(state[wrong].shape)}, the model needs {tuple(own[wrong].shape)}")
    model.load_state_dict({k: state[k] for k in own})


# timm ViT submodules that only `forward_head` runs (pooling and classifier heads): `forward_features`,
# which GraFT calls, never touches them (e.g. SigLIP's attention-pool `attn_pool`, DeiT's `head_dist`).
HEAD_MODULES: tuple[str, ...] = ("attn_pool", "fc_norm", "head", "head_dist")


def unused_modules(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's head submodules that hold parameters but are not on the `forward_features` path
    (of every stream for a multi-stream backbone, which holds one ViT per modality in `streams`)."""
    streams = getattr(backbone, "streams", None)
    if isinstance(streams, nn.ModuleDict):
        return [m for vit in streams.values() for m in unused_modules(vit)]
    found = [getattr(backbone, name, None) for name in HEAD_MODULES]
    return [m for m in found if isinstance(m, nn.Module) and any(True for _ in m.parameters())]
