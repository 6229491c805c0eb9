"""Backbones by timm name: distilled DeiT-B, DINOv2 ViT-B/14, CLIP ViT-B/16 (and SigLIP-style attention pools).

The B-size backbones are built here at their real family configuration but shrunk through
model.backbone_args (1 block, width 64) and tiny images: a full ViT-B forward, backward and ONNX
export per family would take minutes on the 2 loaded cores this suite runs on. Token layout,
patch size, layer scale (DINOv2), pre-norm and statistics (CLIP) are those of the named family.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

from graft_edge.checkpoint import save_checkpoint
from graft_edge.config import get_preset
from graft_edge.export import ExportOptions, export_model
from graft_edge.model import build_model, count_params, embedding_params
from graft_edge.train.distributed import DistEnv
from graft_edge.train.loop import make_stage, needs_unused_search, train_step

SHRINK = {"depth": 1, "embed_dim": 64, "num_heads": 2}
# (preset, img_size, prefix tokens: class + distillation / register tokens)
FAMILIES = [("rgbnt100", (32, 32), 2), ("rgbnt100-dinov2", (28, 28), 1), ("rgbnt100-clip", (32, 32), 1)]


def _tiny(preset: str, img_size: tuple[int, int], **args):
    cfg = get_preset(preset)
    model = replace(cfg.model, pretrained=False, backbone_args={**SHRINK, **args}, img_size=img_size, num_ids=4,
                    enc_heads=2, enc_ff=32)
    return replace(cfg, model=model)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def test_presets_name_the_families_and_their_statistics() -> None:
    names = {p: get_preset(p).model.backbone for p, _, _ in FAMILIES}
    assert names == {"rgbnt100": "deit_base_distilled_patch16_224", "rgbnt100-dinov2": "vit_base_patch14_dinov2",
                     "rgbnt100-clip": "vit_base_patch16_clip_224"}
    for preset, name in names.items():
        timm_cfg = timm.models.get_pretrained_cfg(name)
        m = get_preset(preset).model
        assert m.mean == pytest.approx(timm_cfg.mean) and m.std == pytest.approx(timm_cfg.std)


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "img_size", "prefix"), FAMILIES)
def test_family_builds_trains_a_step_and_exports_with_parity(preset: str, img_size: tuple[int, int], prefix: int,
                                                             tmp_path: Path) -> None:
    cfg = _tiny(preset, img_size)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    patch = model.backbone.patch_embed.patch_size[0]
    with torch.no_grad():
        tokens = model.backbone.forward_features(torch.zeros(1, 3, *img_size))
    assert tokens.shape == (1, prefix + (img_size[0] // patch) * (img_size[1] // patch), 64)
    # one training step on synthetic data moves the weights and gives a finite loss
    stage = replace(cfg.train.stage2, loss=replace(cfg.train.stage2.loss, triplets_per_anchor=2))
    run = make_stage(model, stage, total_steps=1, env=DistEnv())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = {m: torch.randn(4, 3, *img_size) for m in cfg.model.modalities}
    parts = train_step(run, images, torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(parts.total) and parts.triplet > 0
    assert not torch.equal(before["backbone.blocks.0.attn.qkv.weight"], model.backbone.blocks[0].attn.qkv.weight)
    # export: ONNX FP32 within the default tolerance of PyTorch
    ckpt = save_checkpoint(tmp_path / "m.pt", model.eval(), cfg)
    result = export_model(ckpt, tmp_path / "out", ExportOptions())
    parity = result.get("onnx-fp32").parity
    assert parity["max_abs_diff"] <= ExportOptions().tolerance and parity["min_cosine"] > 0.99999


def test_attention_pool_is_not_counted_and_makes_ddp_search_for_unused() -> None:
    cfg = _tiny("rgbnt100-clip", (32, 32), global_pool="map")  # SigLIP-style attention pool on the backbone
    model = build_model(cfg.model)
    pool = count_params(model.backbone.attn_pool)
    plain = build_model(_tiny("rgbnt100-clip", (32, 32)).model)
    assert pool > 0 and embedding_params(model) == embedding_params(plain)
    assert count_params(model) == count_params(plain) + pool
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    assert needs_unused_search(model) and not needs_unused_search(plain)
    for p in model.backbone.parameters():
        p.requires_grad_(False)  # a frozen backbone (stage 1): nothing to search for
    assert not needs_unused_search(model)


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "tokens"), [("rgbnt100-dinov2", 1 + 16 * 16), ("rgbnt100-clip", 1 + 14 * 14)])
def test_full_size_b_backbones_build(preset: str, tokens: int) -> None:
    """The real ViT-B/14 DINOv2 and ViT-B/16 CLIP (random weights) at 224 x 224."""
    cfg = get_preset(preset)
    model = build_model(replace(cfg.model, pretrained=False))
    assert 85e6 < count_params(model.backbone) < 87.5e6
    with torch.no_grad():
        out = model.backbone.forward_features(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, tokens, 768)


def test_attention_pools_of_every_stream_are_left_out_for_multistream() -> None:
    cfg = _tiny("rgbnt100-clip", (32, 32), global_pool="map")
    model = build_model(replace(cfg.model, fusion="multistream"))
    pools = [vit.attn_pool for vit in model.backbone.streams.values()]
    assert len(pools) == 3 and all(count_params(p) > 0 for p in pools)
    plain = build_model(replace(_tiny("rgbnt100-clip", (32, 32)).model, fusion="multistream"))
    assert embedding_params(model) == embedding_params(plain)
    assert count_params(model) == count_params(plain) + sum(count_params(p) for p in pools)
