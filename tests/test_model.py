"""GraFT model: parameter counts, shapes, the fusion-token attention path, missing modalities, variants."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from graft_edge.config import get_preset
from graft_edge.errors import GraftError
from graft_edge.model import GraftOutput, build_model, count_params, embedding_params


def _inputs(modalities, batch=2, size=(32, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, 3, *size, generator=g) for m in modalities}


@pytest.mark.parametrize(
    "preset, expected",
    [("rgbnt100", 102_342_912), ("rgbn300", 96_828_928)],
)
def test_full_size_embedding_params_match_paper(preset: str, expected: int) -> None:
    with torch.device("meta"):  # shapes only: counting parameters needs no memory and no weight initialisation
        model = build_model(get_preset(preset).model, pretrained=False)
    assert model.cfg.backbone == "deit_base_distilled_patch16_224"  # the authors' backbone (official pretrained_model)
    assert embedding_params(model) == expected  # measured; the paper's 102.34M / 96.83M (Tables 1-2) to 0.5%
    assert abs(embedding_params(model) - {"rgbnt100": 102.34e6, "rgbn300": 96.83e6}[preset]) / expected < 0.005
    # distilled DeiT-B: 85,800,192 (the plain DeiT-B's 85,798,656 plus the distillation token and its position)
    assert count_params(model.backbone) == 85_800_192
    for enc in model.fusion.encoders.values():
        assert count_params(enc) == 5_513_984
    num_ids = model.cfg.num_ids
    assert count_params(model) - embedding_params(model) == 768 * num_ids + 2 * 768  # classifier + BN
    assert type(model.backbone).__name__ == "VisionTransformerDistilled"
    with torch.device("meta"):  # shapes through the real forward: CLS + distillation token + 14 x 14 patches
        tokens = model.backbone.forward_features(torch.zeros(1, 3, 224, 224))
        emb = model.eval().embed({m: torch.zeros(2, 3, 224, 224) for m in model.modalities})
    assert tuple(tokens.shape) == (1, 198, 768) and tuple(emb.shape) == (2, 768)


@pytest.mark.parametrize("modalities", [("rgb",), ("rgb", "nir"), ("rgb", "nir", "tir"), ("nir", "tir")])
def test_output_shapes(modalities) -> None:
    model = build_model(tiny_config(modalities).model).eval()
    out = model(_inputs(modalities, batch=3))
    assert isinstance(out, GraftOutput)
    d, m = model.embed_dim, len(modalities)
    assert out.embedding.shape == (3, d) and out.neck.shape == (3, d)
    assert out.logits.shape == (3, model.cfg.num_ids)
    assert out.fusion_tokens.shape == (3, m, d) and out.data_tokens.shape == (3, m, d)
    emb = model.embed(_inputs(modalities, batch=3))
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_train_and_eval_differ_only_in_bnneck_statistics_and_dropout() -> None:
    model = build_model(tiny_config(enc_dropout=0.0).model)
    bn = model.head.bn
    x = _inputs(("rgb", "nir", "tir"), batch=4)
    with torch.no_grad():
        train = model.train()(x)  # one BatchNorm step: running stats move 10% towards the batch's
        evald = model.eval()(x)
    assert type(train) is type(evald) is GraftOutput
    # without dropout, everything up to the fused embedding is the same in both modes
    for field in ("embedding", "fusion_tokens", "data_tokens"):
        assert torch.allclose(getattr(train, field), getattr(evald, field), atol=1e-6), field
    emb = train.embedding
    mean, var = emb.mean(0), emb.var(0, unbiased=False)
    # train: BNNeck normalises with the batch's statistics (weight 1, bias 0 at init)
    assert torch.allclose(train.neck, (emb - mean) / torch.sqrt(var + bn.eps), atol=1e-4)
    assert torch.allclose(bn.running_mean, 0.1 * mean, atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * emb.var(0, unbiased=True), atol=1e-6)
    # eval: with the running statistics
    assert torch.allclose(evald.neck, (emb - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps), atol=1e-5)
    # the classifier is a bias-free linear map of the neck in both modes
    for out in (train, evald):
        assert torch.allclose(out.logits, out.neck @ model.head.classifier.weight.T, atol=1e-6)


def test_dropout_acts_in_train_mode_only() -> None:
    model = build_model(tiny_config().model)  # the preset's enc_dropout
    assert model.cfg.enc_dropout > 0
    x = _inputs(("rgb", "nir", "tir"))
    with torch.no_grad():
        a, b = model.train()(x).fusion_tokens, model.train()(x).fusion_tokens
        c, d = model.eval()(x).fusion_tokens, model.eval()(x).fusion_tokens
    assert not torch.allclose(a, b) and torch.equal(c, d)


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_embed_is_the_normalised_configured_feature(neck_feat: str) -> None:
    model = build_model(tiny_config(neck_feat=neck_feat).model).eval()
    with torch.no_grad():
        model.head.bn.running_mean.normal_(0, 0.5)  # a trained BNNeck is not the identity
        model.head.bn.running_var.uniform_(0.5, 2.0)
        x = _inputs(("rgb", "nir"), batch=3)
        out, emb = model(x), model.embed(x)
    feat = out.embedding if neck_feat == "before" else out.neck
    assert torch.allclose(emb, feat / feat.norm(dim=1, keepdim=True), atol=1e-6)
    other = out.neck if neck_feat == "before" else out.embedding
    assert not torch.allclose(emb, other / other.norm(dim=1, keepdim=True), atol=1e-3)


def test_modalities_only_meet_through_the_fusion_token() -> None:
    model = build_model(tiny_config().model).eval()
    x = _inputs(("rgb", "nir", "tir"))
    y = dict(x, rgb=x["rgb"] + 1.0)  # perturb RGB only
    with torch.no_grad():
        a, b = model(x), model(y)
    # RGB's own encoder outputs change ...
    assert not torch.allclose(a.fusion_tokens[:, 0], b.fusion_tokens[:, 0])
    # ... the other modalities' encoders never see RGB tokens
    assert torch.allclose(a.fusion_tokens[:, 1:], b.fusion_tokens[:, 1:], atol=1e-6)
    assert torch.allclose(a.data_tokens[:, 1:], b.data_tokens[:, 1:], atol=1e-6)
    # and the fused embedding is exactly the mean of the per-modality fusion tokens (eq. 6)
    assert torch.allclose(a.embedding, a.fusion_tokens.mean(1), atol=1e-6)


def test_fusion_token_is_shared_and_learns() -> None:
    model = build_model(tiny_config().model)
    token = model.fusion.fusion_token
    assert token.shape == (1, 1, model.embed_dim)
    out = model(_inputs(("rgb", "nir", "tir"), batch=4))
    out.embedding.sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0


def test_missing_modality_is_averaged_out() -> None:
    model = build_model(tiny_config().model).eval()
    x = _inputs(("rgb", "nir", "tir"))
    with torch.no_grad():
        full = model(x)
        part = model({"rgb": x["rgb"], "tir": x["tir"]})
    assert part.fusion_tokens.shape[1] == 2
    assert torch.allclose(part.embedding, full.fusion_tokens[:, [0, 2]].mean(1), atol=1e-5)


def test_vanilla_fusion_mixes_modalities() -> None:
    for fusion in ("cls", "avg"):
        model = build_model(tiny_config(fusion=fusion).model).eval()
        assert list(model.fusion.encoders) == ["joint"]
        x = _inputs(("rgb", "nir", "tir"))
        y = dict(x, rgb=x["rgb"] + 1.0)
        with torch.no_grad():
            a, b = model(x), model(y)
        # a joint encoder lets RGB reach the NIR data tokens directly
        assert not torch.allclose(a.data_tokens[:, 1], b.data_tokens[:, 1], atol=1e-6)


def test_bad_modality_inputs() -> None:
    model = build_model(tiny_config(("rgb", "nir")).model)
    with pytest.raises(GraftError, match="tir"):
        model(_inputs(("rgb", "tir")))
    with pytest.raises(GraftError, match="no input modality"):
        model({})


def test_bnneck_bias_frozen_and_classifier_bias_free() -> None:
    model = build_model(tiny_config().model)
    assert not model.head.bn.bias.requires_grad and torch.all(model.head.bn.bias == 0)
    assert model.head.classifier.bias is None
    assert model.head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.3)


def test_pretrained_without_source_is_a_clear_error(tmp_path) -> None:
    cfg = tiny_config(pretrained=True, pretrained_file=str(tmp_path / "missing.pth"))
    with pytest.raises(GraftError, match="missing.pth"):
        build_model(cfg.model)


def test_pretrained_from_local_file(tmp_path) -> None:
    src = build_model(tiny_config().model)
    path = tmp_path / "backbone.pth"
    torch.save(src.backbone.state_dict(), path)
    model = build_model(tiny_config(pretrained=True, pretrained_file=str(path)).model)
    assert torch.equal(model.backbone.pos_embed, src.backbone.pos_embed)


def test_unknown_backbone() -> None:
    with pytest.raises(GraftError, match="unknown timm backbone"):
        build_model(tiny_config(backbone="not_a_vit").model)


def test_distilled_deit_data_tokens_include_dist_token() -> None:
    cfg = tiny_config(backbone="deit_tiny_distilled_patch16_224")
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        tokens = model.backbone.forward_features(torch.randn(1, 3, 32, 64))
    assert tokens.shape[1] == 2 + (32 // 8) * (64 // 8)  # cls + dist + patches
    assert model.embed(_inputs(("rgb", "nir", "tir"), batch=2)).shape == (2, 64)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "safetensors"])
def test_pretrained_file_forms_and_classifier_dropped(tmp_path, wrap) -> None:
    src = build_model(tiny_config().model)
    state = {**src.backbone.state_dict(), "head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    if wrap == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "backbone.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "backbone.pth"
        torch.save(state if wrap == "plain" else {"state_dict": state, "epoch": 3}, path)
    model = build_model(tiny_config(pretrained=True, pretrained_file=str(path)).model)
    assert all(torch.equal(v, src.backbone.state_dict()[k]) for k, v in model.backbone.state_dict().items())


def test_pretrained_file_that_does_not_fit(tmp_path) -> None:
    other = build_model(tiny_config(backbone_args={"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 4}).model)
    path = tmp_path / "other.pth"
    torch.save(other.backbone.state_dict(), path)
    with pytest.raises(GraftError, match="does not fit vit_tiny_patch16_224"):
        build_model(tiny_config(pretrained=True, pretrained_file=str(path)).model)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(GraftError, match="cannot be read"):
        build_model(tiny_config(pretrained=True, pretrained_file=str(tmp_path / "junk.pth")).model)
