"""Structured pruning: exact budgets, Torch-Pruning index mapping, timm attention bookkeeping, save/reload."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from graft_edge.checkpoint import load_model, save_checkpoint
from graft_edge.compress import PruneSpec, StructuredPruner, get_method, prune_to_target
from graft_edge.config import get_preset
from graft_edge.errors import GraftError
from graft_edge.model import build_model, embedding_params
from graft_edge.model.arch import apply_arch, extract_arch
from tests.conftest import tiny_config

VARIANTS = {
    "synthetic": lambda: get_preset("synthetic"),
    "rgb+nir": lambda: tiny_config(("rgb", "nir")),
    "tir-only": lambda: tiny_config(("tir",)),
    "cls-fusion": lambda: tiny_config(fusion="cls"),
    "distilled": lambda: tiny_config(backbone="deit_tiny_distilled_patch16_224"),
    "multistream": lambda: tiny_config(("rgb", "nir"), fusion="multistream"),
}


def _model(variant: str = "synthetic", seed: int = 0):
    torch.manual_seed(seed)
    cfg = VARIANTS[variant]()
    return build_model(cfg.model).eval(), cfg


def _inputs(model, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = model.cfg.img_size
    return {m: torch.randn(batch, 3, h, w, generator=g) for m in model.modalities}


def _check_attention(model) -> None:
    for blk in model.backbone.blocks:
        a = blk.attn
        assert a.attn_dim == a.num_heads * a.head_dim
        assert a.qkv.out_features == 3 * a.attn_dim and a.proj.in_features == a.attn_dim
        assert a.scale == pytest.approx(a.head_dim ** -0.5)


@pytest.mark.parametrize("variant, frac, steps", [(v, 0.6, 1) for v in VARIANTS] + [("synthetic", 0.8, 2)])
def test_reaches_target_window(variant: str, frac: float, steps: int) -> None:
    model, cfg = _model(variant)
    target = int(frac * embedding_params(model))
    model, arch, history = prune_to_target(model, target, PruneSpec(steps=steps))
    n = embedding_params(model)
    assert 0.98 * target <= n <= target
    assert history[-1]["params_embedding"] == n and history[-1]["step"] == steps == len(history)
    _check_attention(model)
    with torch.no_grad():
        out = model.embed(_inputs(model))
    assert out.shape == (2, model.embed_dim) and torch.isfinite(out).all()
    assert all(isinstance(b["mlp_hidden"], int) and b["mlp_hidden"] % 8 == 0 for b in arch["blocks"])


def test_head_dims_unit_window_and_scale() -> None:
    model, cfg = _model()
    target = int(0.6 * embedding_params(model))
    model, arch, _ = prune_to_target(model, target, PruneSpec(steps=1, attn_unit="head_dims"))
    assert 0.98 * target <= embedding_params(model) <= target
    assert all(b["num_heads"] == 4 for b in arch["blocks"])
    assert any(b["head_dim"] < 16 for b in arch["blocks"])
    _check_attention(model)
    with torch.no_grad():
        model.embed(_inputs(model))


@torch.no_grad()
def _kill(model) -> None:
    """Zero one head (block 1), one MLP channel (block 2) and one encoder FF channel: they contribute nothing."""
    a = model.backbone.blocks[1].attn
    hd, ad = a.head_dim, a.attn_dim
    for s in range(3):
        a.qkv.weight[s * ad + 2 * hd: s * ad + 3 * hd] = 0
        a.qkv.bias[s * ad + 2 * hd: s * ad + 3 * hd] = 0
    a.proj.weight[:, 2 * hd: 3 * hd] = 0
    mlp = model.backbone.blocks[2].mlp
    mlp.fc1.weight[37] = 0
    mlp.fc1.bias[37] = 0
    mlp.fc2.weight[:, 37] = 0
    enc = model.fusion.encoders["nir"]
    enc.linear1.weight[5] = 0
    enc.linear1.bias[5] = 0
    enc.linear2.weight[:, 5] = 0


def test_dead_units_are_the_ones_cut_and_output_is_unchanged() -> None:
    """Magnitude importance picks the zeroed head/channels, and Torch-Pruning's qkv->proj mapping is right."""
    model, _ = _model()
    _kill(model)
    x = _inputs(model)
    with torch.no_grad():
        before = model.embed(x)
    pruner = StructuredPruner(model, round_to=1)
    widths = {layer.name: layer.width for layer in pruner.layers}
    widths["backbone.blocks.1.attn"] -= 1
    widths["backbone.blocks.2.mlp"] -= 1
    widths["fusion.encoders.nir.ff"] -= 1
    arch = pruner.step(widths=widths)
    assert arch["blocks"][1]["num_heads"] == 3 and arch["blocks"][2]["mlp_hidden"] == 255
    assert arch["encoders"]["nir"]["dim_feedforward"] == 127
    with torch.no_grad():
        after = model.embed(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unit", ["heads", "head_dims"])
def test_save_reload_weights_only_same_output(tmp_path, unit: str) -> None:
    model, cfg = _model()
    model, arch, history = prune_to_target(model, int(0.5 * embedding_params(model)), PruneSpec(attn_unit=unit))
    x = _inputs(model)
    with torch.no_grad():
        ref = model.embed(x)
    path = save_checkpoint(tmp_path / "p.pt", model, cfg, arch=arch, history=history)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["arch"] == arch and raw["history"] == history
    loaded, ckpt = load_model(path)
    assert extract_arch(loaded) == arch
    _check_attention(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), ref, atol=0, rtol=0)
    assert embedding_params(loaded) == embedding_params(model)


def test_apply_arch_rejects_mismatched_arch() -> None:
    model, _ = _model()
    arch = extract_arch(model)
    bad = {**arch, "blocks": arch["blocks"][:-1]}
    with pytest.raises(GraftError, match="backbone blocks"):
        apply_arch(build_model(model.cfg, pretrained=False), bad)
    bad = {**arch, "encoders": {"rgb": {"dim_feedforward": 8}}}
    with pytest.raises(GraftError, match="encoders"):
        apply_arch(build_model(model.cfg, pretrained=False), bad)
    bad = {**arch, "blocks": [{**arch["blocks"][0], "mlp_hidden": "wide"}] + arch["blocks"][1:]}
    with pytest.raises(GraftError, match="positive integer"):
        apply_arch(build_model(model.cfg, pretrained=False), bad)


def test_below_floor_is_refused_before_cutting() -> None:
    model, cfg = _model()
    floor = get_method("structured").floor(model)
    n0 = embedding_params(model)
    with pytest.raises(GraftError, match="smallest size structured"):
        prune_to_target(model, floor - 1)
    assert embedding_params(model) == n0
    model, _, _ = prune_to_target(model, floor, PruneSpec(steps=1))
    assert embedding_params(model) == floor


def test_history_and_finetune_hook() -> None:
    model, cfg = _model()
    calls = []

    def finetune_fn(m, after_step):
        calls.append(after_step)
        return m, {"mAP": 0.5, "R1": 0.75, "loss": 1.0}

    seen = []
    model, _, history = prune_to_target(model, int(0.7 * embedding_params(model)), PruneSpec(steps=2),
                                        finetune_fn=finetune_fn, on_step=lambda m, e: seen.append(e["step"]),
                                        history=[{"note": "earlier"}])
    assert calls == [None, None] and seen == [1, 2]
    assert history[0] == {"note": "earlier"}
    e = history[-1]
    assert {"method", "target", "step", "steps", "step_target", "params_embedding", "params_nonzero"} <= set(e)
    assert e["method"] == "structured" and e["mAP"] == 0.5 and e["R1"] == 0.75 and "loss" not in e


@pytest.mark.slow
def test_rgbnt100_to_60m(tmp_path) -> None:
    """The acceptance case: a full-size RGBNT100 model (102M) to --target 60M, runs and reloads."""
    cfg = get_preset("rgbnt100")
    cfg = replace(cfg, model=replace(cfg.model, pretrained=False))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    model, arch, history = prune_to_target(model, 60_000_000)  # one step without finetuning
    n = embedding_params(model)
    assert 58_800_000 <= n <= 60_000_000
    x = {m: torch.randn(1, 3, 224, 224) for m in cfg.model.modalities}
    with torch.no_grad():
        ref = model.embed(x)
    path = save_checkpoint(tmp_path / "p60.pt", model, cfg, arch=arch, history=history)
    del model
    loaded, _ = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), ref, atol=0, rtol=0)


def test_structured_pruning_leaves_the_global_rng_alone() -> None:
    """Tracing uses its own generator: what training draws after a cut does not depend on the cut."""
    model = build_model(tiny_config().model).eval()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    prune_to_target(model, int(0.6 * embedding_params(model)))
    assert torch.equal(torch.rand(4), expected)


@torch.no_grad()
def test_head_dim_pruning_keeps_the_attention_temperature() -> None:
    """Dims whose q/k/v/proj weights are zero contribute nothing: cutting them must not change the block."""
    model = build_model(tiny_config().model).eval()
    block = model.backbone.blocks[0]
    attn = block.attn
    nh, hd, width = attn.num_heads, attn.head_dim, attn.qkv.in_features
    dead = [h * hd + d for h in range(nh) for d in range(hd // 2, hd)]  # the upper half of every head
    for third in range(3):
        rows = [third * nh * hd + c for c in dead]
        attn.qkv.weight[rows] = 0.0
        attn.qkv.bias[rows] = 0.0
    attn.proj.weight[:, dead] = 0.0
    x = torch.randn(2, 17, width)
    expected = block(x)
    StructuredPruner(model, attn_unit="head_dims").step(widths={"backbone.blocks.0.attn": hd // 2})
    assert attn.head_dim == hd // 2
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
