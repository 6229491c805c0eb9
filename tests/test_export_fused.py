"""Fused-attention ONNX (ORT MultiHeadAttention / Attention nodes) and U8S8 static INT8 on tiny models:
fused-op counts, parity with PyTorch (structured-pruned widths, missing sensors), quantisation after fusion."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from _export_fixtures import make_checkpoint, tiny_dataset  # noqa: F401  (fixtures)
from onnx import numpy_helper

from graft_edge.checkpoint import load_model, save_checkpoint
from graft_edge.cli.export import alias_formats
from graft_edge.compress.structured import StructuredPruner
from graft_edge.errors import GraftError
from graft_edge.export.fusion import export_fused, fused_copy, fused_op_counts, runtime_op_counts
from graft_edge.export.options import ExportOptions
from graft_edge.export.pipeline import export_model
from graft_edge.export.quantize import quantize_dynamic_int8
from graft_edge.formats import FORMATS
from graft_edge.model.arch import extract_arch

MODS = ("rgb", "nir", "tir")
pytestmark = pytest.mark.slow  # each export takes 5-20 s on the shared 2 cores (still run in CI)
LAYERS = 2 + len(MODS)  # 2 ViT blocks + one fusion encoder per modality


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{dense, pruned}: the tiny 2-block model, and a copy with block 0 cut to 1 head, block 1 to half-size heads
    (temperature folded into q) and thinner MLP / encoder feed-forward widths."""
    root = tmp_path_factory.mktemp("fused-ckpt")
    dense = make_checkpoint(root / "dense.pt", MODS)
    model, ckpt = load_model(dense)
    StructuredPruner(model, round_to=1).step(widths={"backbone.blocks.0.attn": 1, "backbone.blocks.1.mlp": 40,
                                                     "fusion.encoders.nir.ff": 24})
    StructuredPruner(model, round_to=1, attn_unit="head_dims").step(widths={"backbone.blocks.1.attn": 8})
    assert (model.backbone.blocks[1].attn.head_dim, model.backbone.blocks[0].attn.num_heads) == (8, 1)
    pruned = save_checkpoint(root / "pruned.pt", model, ckpt.config, arch=extract_arch(model),
                             history=[{"method": "structured"}])
    return {"dense": dense, "pruned": pruned}


def _feeds(modalities, batch=3, present=None, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {m: rng.standard_normal((batch, 3, 32, 64), dtype=np.float32) for m in modalities}
    feeds["present"] = np.ones((batch, len(modalities)), np.float32) if present is None else present
    return feeds


@pytest.mark.parametrize("which", ["dense", "pruned"])
@pytest.mark.parametrize("op", ["MultiHeadAttention", "Attention"])
def test_fused_graph_has_one_node_per_attention_and_matches_pytorch(tmp_path, checkpoints, which, op):
    model, _ = load_model(checkpoints[which])
    path = tmp_path / "fused.onnx"
    record = export_fused(model, path, op=op)
    counts = fused_op_counts(path)
    assert record["attention_layers"] == LAYERS and counts[op] == LAYERS
    assert counts.get("Softmax", 0) == 0 and record["softmax_left"] == 0  # no attention left unfused
    # ORT's load-time fusion on top: both residual Add + LayerNorm of every post-norm fusion encoder
    assert runtime_op_counts(path)["SkipLayerNormalization"] >= 2 * len(MODS)
    # every row a different subset of sensors: the presence mask still selects PyTorch's subset embedding
    present = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1]], np.float32)
    feeds = _feeds(MODS, present=present)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        for row, mask in enumerate(present):
            subset = {m: torch.from_numpy(feeds[m][row:row + 1]) for m, keep in zip(MODS, mask) if keep}
            np.testing.assert_allclose(got[row], model.embed(subset)[0].numpy(), atol=2e-5)


def test_fused_copy_is_the_same_function_and_refuses_unknown_ops(checkpoints):
    model, _ = load_model(checkpoints["pruned"])
    fused, count = fused_copy(model)
    x = {m: torch.from_numpy(v) for m, v in _feeds(MODS).items() if m != "present"}
    with torch.no_grad():
        torch.testing.assert_close(fused.embed(x), model.embed(x), atol=1e-6, rtol=1e-5)
    assert count == LAYERS and model.backbone.blocks[0].attn.__class__.__name__ == "Attention"  # original untouched
    with pytest.raises(GraftError, match="fused attention op"):
        fused_copy(model, op="FlashAttention")


def test_dynamic_int8_after_fusion_quantises_the_attention(tmp_path, checkpoints):
    model, _ = load_model(checkpoints["pruned"])
    for op, expect in (("Attention", {"QAttention": LAYERS}), ("MultiHeadAttention", {"MultiHeadAttention": LAYERS})):
        src, dst = tmp_path / f"{op}.onnx", tmp_path / f"{op}.int8.onnx"
        export_fused(model, src, op=op)
        quantize_dynamic_int8(src, dst, attention=True)
        counts = fused_op_counts(dst)
        assert {k: counts.get(k, 0) for k in expect} == expect
        assert counts.get("Attention", 0) == 0 if op == "Attention" else counts["MatMulInteger"] >= 4 * LAYERS
        feeds = _feeds(MODS)
        ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert np.min(np.sum(ref * got, axis=1)) > 0.999


def test_export_fused_and_u8s8_formats(tmp_path, checkpoints, tiny_dataset):  # noqa: F811
    opts = ExportOptions(formats=("int8-u8s8", "int8-fused"), calib_data=tiny_dataset,
                         calib_samples=16)
    result = export_model(checkpoints["pruned"], tmp_path, opts)
    assert result.ok, result.failures
    fused = result.get("onnx-fp32-fused")
    assert fused.status == "staged" and not (tmp_path / "model.fused.onnx").exists()  # only a source here
    assert fused.parity["max_abs_diff"] < 1e-4
    subsets = {c["modalities"] for c in fused.parity["checks"]}
    assert {"rgb", "nir+tir"} <= subsets  # missing-sensor parity ran through the presence mask
    for kind in ("onnx-int8-u8s8", "onnx-int8-dynamic-fused"):
        art = result.get(kind)
        assert art.status == "ok" and art.parity["min_cosine"] > 0.99, (kind, art.parity["min_cosine"])
    assert fused_op_counts(tmp_path / "model.int8-dynamic-fused.onnx")["MultiHeadAttention"] == LAYERS
    assert result.get("onnx-int8-dynamic-fused").parity["max_abs_diff"] < 0.05
    _assert_u8s8(tmp_path / "model.int8-u8s8.onnx")


def _assert_u8s8(path):
    """Activations quantised to uint8 with nonzero zero points somewhere (asymmetric); weights int8 per channel."""
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = set(inits)
    act_zps, weight_zps = [], []
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            act_zps.append(inits[node.input[2]])
        if node.op_type == "DequantizeLinear" and node.input[0] in consts and inits[node.input[0]].ndim == 2:
            weight_zps.append(inits[node.input[2]])
    assert act_zps and all(z.dtype == np.uint8 for z in act_zps)
    assert any(int(z) != 0 for z in act_zps)  # asymmetric ranges, not symmetric-around-128
    assert weight_zps and all(z.dtype == np.int8 and z.size > 1 and not z.any() for z in weight_zps)


def test_options_name_the_fused_formats():
    opts = ExportOptions(formats=("int8-fused", "int8-u8s8"), calib_data="data").validated()
    assert [f.name for f in opts.rows()] == ["int8-u8s8", "int8-fused"]
    assert [f.name for f in opts.plan()] == ["onnx", "int8-u8s8", "onnx-fused", "int8-fused"]  # sources first
    assert not opts.keeps(FORMATS["onnx-fused"]) and opts.keeps(FORMATS["int8-fused"])
    with pytest.raises(GraftError, match="unknown format 'int4-fused'"):
        ExportOptions(formats=("int4-fused",)).validated()
    with pytest.raises(GraftError, match="--attention-op"):
        ExportOptions(formats=("onnx-fused",), attention_op="Flash").validated()
    with pytest.raises(GraftError, match="--formats int8-u8s8 needs --calib-data"):
        ExportOptions(formats=("int8-u8s8",)).validated()
    with pytest.raises(GraftError, match="--fused 'static'"):  # dropped: slower than static of the plain graph
        alias_formats(None, None, ["static"], False, False, None)
