"""The multi-stream baseline: one ViT per modality (no sharing), CLS tokens averaged; trains, prunes, exports."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from graft_edge.checkpoint import load_model, save_checkpoint
from graft_edge.compress import prune_to_target
from graft_edge.config import get_preset
from graft_edge.model import build_model, count_params, embedding_params
from graft_edge.model.arch import extract_arch
from graft_edge.model.backbone import create_backbone


def _cfg(modalities=("rgb", "nir", "tir")):
    cfg = get_preset("synthetic")
    return replace(cfg, model=replace(cfg.model, fusion="multistream", modalities=modalities))


def _inputs(model, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = model.cfg.img_size
    return {m: torch.randn(batch, 3, h, w, generator=g) for m in model.modalities}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.mark.parametrize("modalities", [("rgb", "nir", "tir"), ("rgb", "nir")])
def test_one_unshared_vit_per_modality(modalities: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    cfg = _cfg(modalities)
    model = build_model(cfg.model).eval()
    one_vit = count_params(create_backbone(cfg.model))
    streams = model.backbone.streams
    assert list(streams) == list(modalities) and count_params(model.backbone) == len(modalities) * one_vit
    ids = [{id(p) for p in s.parameters()} for s in streams.values()]
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1:])  # no weight sharing
    assert len(model.fusion.encoders) == 0 and len(model.backbone.blocks) == len(modalities) * 4
    head = model.head.bn.weight.numel() + model.head.bn.bias.numel()
    assert embedding_params(model) == count_params(model) - count_params(model.head) == len(modalities) * one_vit
    assert count_params(model.head) - head == model.head.classifier.weight.numel()


def test_embedding_is_the_mean_of_each_streams_cls_token() -> None:
    torch.manual_seed(0)
    model = build_model(_cfg().model).eval()
    x = _inputs(model)
    with torch.no_grad():
        cls = {m: model.backbone.streams[m].forward_features(x[m])[:, 0] for m in model.modalities}  # (B, D)
        out = model(x)
        torch.testing.assert_close(out.embedding, torch.stack(list(cls.values())).mean(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(out.fusion_tokens[:, 1], cls["nir"], atol=0, rtol=0)
        partial = model({m: x[m] for m in ("rgb", "tir")}).embedding  # a missing sensor averages out
        torch.testing.assert_close(partial, (cls["rgb"] + cls["tir"]) / 2, atol=1e-6, rtol=0)
        y = dict(x, nir=torch.zeros_like(x["nir"]))
        changed = model.backbone.streams["rgb"].forward_features(y["rgb"])[:, 0]
        torch.testing.assert_close(changed, cls["rgb"])  # the rgb stream never sees the nir image


def test_structured_prune_save_reload_and_onnx_parity(tmp_path: Path) -> None:
    from graft_edge.export.pipeline import ExportOptions, export_model
    from graft_edge.runtime import load_embedder

    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg.model).eval()
    dense = embedding_params(model)
    model, arch, history = prune_to_target(model, int(0.5 * dense))
    assert 0.45 * dense <= embedding_params(model) <= 0.5 * dense and len(arch["blocks"]) == 12
    assert arch["encoders"] == {}
    path = save_checkpoint(tmp_path / "p.pt", model, cfg, arch=arch, history=history)
    loaded, _ = load_model(path)
    x = _inputs(model)
    with torch.no_grad():
        ref = model.embed(x)
        torch.testing.assert_close(loaded.embed(x), ref, atol=0, rtol=0)
    assert extract_arch(loaded) == arch
    result = export_model(path, tmp_path / "exp", ExportOptions())
    onnx = result.get("onnx-fp32")
    assert result.ok and onnx is not None and onnx.status == "ok"
    got = load_embedder(onnx.path, threads=1).embed({m: v.numpy() for m, v in x.items()})
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4)


def test_trains_with_the_same_losses_each_stream_learns(tmp_path: Path) -> None:
    from graft_edge.data.synthetic import write_synthetic
    from graft_edge.train import run_training

    root = write_synthetic(tmp_path / "syn", ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0).root
    cfg = _cfg()
    cfg = replace(cfg, model=replace(cfg.model, img_size=(16, 32),
                                     backbone_args={**cfg.model.backbone_args, "depth": 1, "embed_dim": 32,
                                                    "num_heads": 2}),
                  data=replace(cfg.data, ids_per_batch=2, instances_per_id=2, val_fraction=0.0))
    torch.manual_seed(0)
    start = build_model(cfg.model).state_dict()
    result = run_training(cfg, root, tmp_path / "run", max_steps=2, progress=False)
    trained, _ = load_model(result.best)
    for m in cfg.model.modalities:
        key = f"backbone.streams.{m}.blocks.0.mlp.fc1.weight"
        assert not torch.equal(trained.state_dict()[key], start[key])
    assert trained.cfg.fusion == "multistream" and result.steps == 4 and 0.0 <= result.metrics["mAP"] <= 1.0


def test_init_writes_a_multistream_checkpoint(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    res = CliRunner().invoke(app, ["init", "synthetic", "--out", str(tmp_path / "m.pt"), "--fusion", "multistream",
                                   "--modalities", "rgb,nir"])
    assert res.exit_code == 0, res.output
    model, ck = load_model(tmp_path / "m.pt")
    assert ck.config.model.fusion == "multistream" and list(model.backbone.streams) == ["rgb", "nir"]
    bad = CliRunner().invoke(app, ["init", "synthetic", "--out", str(tmp_path / "x.pt"), "--fusion", "nope"])
    assert bad.exit_code == 2 and "model.fusion='nope'" in bad.output


def test_flops_count_the_fusion_encoders_and_match_the_shared_backbone() -> None:
    from graft_edge.profile.flops import model_flops_per_sample

    torch.manual_seed(0)
    graft = build_model(replace(_cfg().model, fusion="token")).eval()
    multi = build_model(_cfg().model).eval()
    # the shared backbone runs once per modality, like the three streams: the difference is GraFT's encoders
    n_tokens = (32 // 8) * (64 // 8) + 1 + 1  # patches + cls + fusion token
    d, ff = graft.embed_dim, graft.cfg.enc_ff
    linear = 2 * n_tokens * (4 * d * d + 2 * d * ff)  # q, k, v, out projections and the feed-forward, per encoder
    attention = 2 * 2 * n_tokens * n_tokens * d  # QK^T and AV (the CPU SDPA kernel may go uncounted)
    diff = model_flops_per_sample(graft) - model_flops_per_sample(multi)
    assert 3 * linear <= diff <= 3 * (linear + attention)
