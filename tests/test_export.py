"""ONNX export end to end on tiny models: names, dynamic batch, parity, metadata, INT8, FP16, OnnxEmbedder."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _export_fixtures import tiny_checkpoint_factory, tiny_dataset  # noqa: F401  (fixtures)

from graft_edge.artefact.onnx_file import read_onnx_props
from graft_edge.artefact.record import sidecar_path
from graft_edge.errors import GraftError
from graft_edge.export.pipeline import ExportOptions, export_model

SUBSETS = [("rgb",), ("rgb", "nir"), ("rgb", "nir", "tir")]
pytestmark = pytest.mark.slow  # each module-scoped export takes 5-20 s on 2 cores (still run in CI)


@pytest.fixture(scope="module", params=SUBSETS, ids=lambda m: "+".join(m))
def exported(request, tmp_path_factory, tiny_checkpoint_factory, tiny_dataset):  # noqa: F811
    """One export per modality subset: FP32 + INT8 dynamic/static + FP16, with real-image checks."""
    modalities = request.param
    ckpt = tiny_checkpoint_factory(modalities, history=[{"method": "structured", "target": "60M"}])
    out = tmp_path_factory.mktemp("export")
    opts = ExportOptions(formats=("onnx", "int8", "int8-static", "fp16"), calib_data=tiny_dataset, calib_samples=16)
    lines: list[str] = []
    result = export_model(ckpt, out, opts, log=lines.append)
    return modalities, ckpt, out, result, lines


def _run(path, batch):
    """Run an exported file on every modality (an all-ones presence mask added where the graph takes one)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if "present" in names and "present" not in batch:
        n = len(next(iter(batch.values())))
        batch = {**batch, "present": np.ones((n, len(names) - 1), np.float32)}
    return sess, sess.run(None, batch)[0]


def test_onnx_names_and_dynamic_batch(exported):
    modalities, ckpt, out, result, _ = exported
    path = out / "model.onnx"
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == list(modalities) + ["present"]  # + the presence mask
    assert [o.name for o in proto.graph.output] == ["embedding"]
    assert all(not i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in proto.graph.input)
    for b in (1, 3):
        batch = {m: np.random.default_rng(b).standard_normal((b, 3, 32, 64), dtype=np.float32) for m in modalities}
        _, emb = _run(path, batch)
        assert emb.shape == (b, 32)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_parity_numbers(exported):
    modalities, ckpt, out, result, lines = exported
    assert result.ok, result.failures
    fp32 = result.get("onnx-fp32")
    kinds = {(c["inputs"], c["batch"]) for c in fp32.parity["checks"]}
    assert {("random", 1), ("random", 4), ("real", 1), ("real", 8)} <= kinds  # the gallery split holds 8
    assert fp32.parity["max_abs_diff"] <= 1e-4 and fp32.parity["min_cosine"] > 0.99999
    assert any(line.startswith("ok model.onnx") for line in lines)
    # the parity really compares with PyTorch: recompute one check here
    import torch

    from graft_edge.checkpoint import load_model

    model, _ = load_model(ckpt)
    batch = {m: np.random.default_rng(7).standard_normal((2, 3, 32, 64), dtype=np.float32) for m in modalities}
    with torch.no_grad():
        ref = model.embed({m: torch.from_numpy(x) for m, x in batch.items()}).numpy()
    _, got = _run(out / "model.onnx", batch)
    assert np.abs(ref - got).max() < 1e-4


def test_metadata_props_and_sidecar(exported):
    modalities, ckpt, out, result, _ = exported
    from graft_edge.fileio import sha256_file

    props = read_onnx_props(out / "model.onnx")
    assert props["modalities"] == list(modalities) and props["input_names"] == list(modalities) + ["present"]
    assert props["presence_input"] == "present"
    assert props["img_size"] == [32, 64] and props["mean"] == [0.5, 0.5, 0.5] and props["std"] == [0.5, 0.5, 0.5]
    assert props["embed_dim"] == 32 and props["precision"] == "fp32" and props["output_name"] == "embedding"
    assert props["source_sha256"] == sha256_file(ckpt)
    assert props["history"] == [{"method": "structured", "target": "60M"}]
    assert props["params_embedding"] > 0 and props["params_nonzero"] <= props["params_embedding"]
    assert {"torch", "onnx", "onnxruntime", "graft_edge"} <= set(props["tool_versions"])
    assert props["parity"]["max_abs_diff"] == result.get("onnx-fp32").parity["max_abs_diff"]
    side = json.loads(sidecar_path(out / "model.onnx").read_text())
    assert sidecar_path(out / "model.onnx").name == "model.json"
    assert side["modalities"] == list(modalities) and side["precision"] == "fp32"
    files = side["artefact"]["files"]
    assert files[0]["name"] == "model.onnx" and files[0]["sha256"] == sha256_file(out / "model.onnx")
    assert props["tolerance"] == ExportOptions().tolerance and props["parity"]["max_abs_diff"] <= props["tolerance"]
    for name, precision in (("model.int8-static", "int8-static"), ("model.int8-dynamic", "int8-dynamic"), ("model.fp16", "fp16")):
        derived = read_onnx_props(out / f"{name}.onnx")
        assert derived["precision"] == precision and derived["modalities"] == list(modalities)
        assert "tolerance" not in derived  # FP32-only entries are not inherited
        assert json.loads((out / f"{name}.json").read_text())["precision"] == precision
    summary = json.loads((out / "export.json").read_text())
    assert summary["ok"] and len(summary["artefacts"]) == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_onnx_embedder_info_and_embed(exported):
    from graft_edge.cli.model_cmds import describe_model
    from graft_edge.runtime import load_embedder

    modalities, ckpt, out, result, _ = exported
    emb = load_embedder(out / "model.onnx", threads=1)
    info = emb.info
    assert info.format == "onnx" and info.modalities == modalities and info.img_size == (32, 64)
    assert info.embed_dim == 32 and info.extra["precision"] == "fp32" and info.extra["history"]
    ref = load_embedder(ckpt)
    assert info.params_embedding == ref.info.params_embedding
    batch = {m: np.random.default_rng(3).standard_normal((3, 3, 32, 64), dtype=np.float32) for m in modalities}
    np.testing.assert_allclose(emb.embed(batch), ref.embed(batch), atol=1e-4)
    facts = describe_model(out / "model.int8-static.onnx")
    assert facts["format"] == "onnx" and facts["precision"] == "int8-static" and facts["history"]
    with pytest.raises(GraftError, match="expected \\(B, 3, 32, 64\\)"):
        emb.embed({m: np.zeros((1, 3, 16, 16), np.float32) for m in modalities})
    with pytest.raises(GraftError, match="not one of model.onnx's modalities"):
        emb.embed({**batch, "uv": batch[modalities[0]]})


def test_int8_models_are_valid_and_close(exported):
    modalities, ckpt, out, result, _ = exported
    for kind in ("onnx-int8-dynamic", "onnx-int8-static"):
        art = result.get(kind)
        assert art.status == "ok" and art.parity["min_cosine"] > 0.98, (kind, art.parity)
        onnx.checker.check_model(str(art.path))
    ops = {n.op_type for n in onnx.load(str(out / "model.int8-static.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    dyn_ops = {n.op_type for n in onnx.load(str(out / "model.int8-dynamic.onnx")).graph.node}
    assert dyn_ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    meta = json.loads((out / "model.int8-static.json").read_text())
    assert meta["quantization"]["calibration_samples"] == 16 and meta["quantization"]["calibration_split"] == "train"
    assert meta["cosine_vs_fp32"]["real"]["min_cosine"] > 0.98
    # the weights shrink about 4x (norms, biases, embeddings and scales stay FP32). Compared as initializer
    # bytes: a tiny model's file is mostly graph, and onnxruntime 1.30's quantiser writes a larger graph.

    def weight_bytes(name: str) -> int:
        return sum(onnx.numpy_helper.to_array(i).nbytes for i in onnx.load(str(out / name)).graph.initializer)

    assert weight_bytes("model.int8-static.onnx") < 0.4 * weight_bytes("model.onnx")


def test_fp16_keeps_layernorm_fp32_and_runs(exported):
    from graft_edge.export.fp16 import fp32_islands

    modalities, ckpt, out, result, _ = exported
    path = out / "model.fp16.onnx"
    islands = fp32_islands(path, "LayerNormalization")
    assert islands and all(t == onnx.TensorProto.FLOAT for _, t in islands)
    assert all(t == onnx.TensorProto.FLOAT for _, t in fp32_islands(path, "Softmax"))
    proto = onnx.load(str(path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)  # matmul weights are fp16
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in proto.graph.input)
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch = {m: np.random.default_rng(5).standard_normal((2, 3, 32, 64), dtype=np.float32) for m in modalities}
    _, got = _run(path, batch)
    _, ref = _run(out / "model.onnx", batch)
    assert got.dtype == np.float32 and np.min(np.sum(got * ref, 1)) > 0.999


def test_unique_node_names_renames_only_repeats():
    from onnx import helper

    from graft_edge.export.fp16 import unique_node_names

    nodes = [helper.make_node("Cast", [f"w{i}"], [f"c{i}"], name=n, to=10)
             for i, n in enumerate(["w_cast", "w_cast", "w_cast_1", "other", "w_cast"])]
    graph = helper.make_graph(nodes, "g", [], [])
    assert unique_node_names(graph) == 2
    names = [n.name for n in graph.node]
    assert len(set(names)) == 5 and names[:4] == ["w_cast", "w_cast_2", "w_cast_1", "other"]


def test_duplicate_casts_of_older_converters_are_dropped():
    from onnx import helper

    from graft_edge.export.fp16 import drop_duplicate_nodes

    cast = helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], name="w_cast_to_fp32_node", to=1)
    twin = helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], name="w_cast_to_fp32_node", to=1)
    use = helper.make_node("LayerNormalization", ["x", "w_cast_to_fp32"], ["y"], name="ln")
    graph = helper.make_graph([cast, use, twin], "g", [], [])
    assert drop_duplicate_nodes(graph) == 1 and [n.name for n in graph.node] == ["w_cast_to_fp32_node", "ln"]
    clash = helper.make_node("Cast", ["w"], ["w_cast_to_fp32"], name="other", to=10)  # same tensor, other type
    graph.node.append(clash)
    with pytest.raises(GraftError, match="defined tensor 'w_cast_to_fp32' twice"):
        drop_duplicate_nodes(graph)


def test_export_fp32_only_with_external_data(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    ckpt = tiny_checkpoint_factory(("rgb", "nir"))
    result = export_model(ckpt, tmp_path, ExportOptions(external_data=True, opset=20))
    assert result.ok and [a.kind for a in result.artefacts] == ["onnx-fp32"]
    assert (tmp_path / "model.onnx.data").is_file()
    files = json.loads((tmp_path / "model.json").read_text())["artefact"]["files"]
    assert [f["name"] for f in files] == ["model.onnx", "model.onnx.data"]
    assert onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).opset_import[0].version == 20
    from graft_edge.runtime import load_embedder

    emb = load_embedder(tmp_path / "model.onnx")
    assert emb.info.extra["file_size"] == sum((tmp_path / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    assert emb.embed({m: np.zeros((2, 3, 32, 64), np.float32) for m in ("rgb", "nir")}).shape == (2, 32)


def test_foreign_onnx_is_refused(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [None, 3, 4, 4])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["rgb"], ["embedding"])], "g", [x], [y])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])  # any ORT loads it
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    from graft_edge.runtime import load_embedder

    with pytest.raises(GraftError, match="carries no graft-edge metadata"):
        load_embedder(tmp_path / "foreign.onnx")


def test_no_onnx_keeps_only_derived_artefacts(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    ckpt = tiny_checkpoint_factory(("rgb",))
    result = export_model(ckpt, tmp_path, ExportOptions(formats=("int8",)))
    assert result.ok
    assert result.get("onnx-fp32").status == "staged" and result.get("onnx-int8-dynamic").status == "ok"
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.json").exists()
    assert (tmp_path / "model.int8-dynamic.onnx").is_file() and (tmp_path / "model.int8-dynamic.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.int8-dynamic.json", "model.int8-dynamic.onnx"]


# Reduced-precision accuracy budget on the tiny dataset (4 queries x 8 gallery): mAP within 2 points of the checkpoint
# and at most one query's top match changed. Measured: identical mAP/R1 for every subset; the query-gallery distances
# (spread 0.15-1.6) move by at most 0.014 under INT8 static, so no gallery image changes rank.
MAP_TOLERANCE = 0.02
DISTANCE_TOLERANCE = 0.05


def _distances(embedder, data_root):
    from graft_edge.data import build_eval_loaders
    from graft_edge.evaluation import extract_features, model_config_of
    from graft_edge.retrieval.metrics import pairwise_distance

    query, gallery = build_eval_loaders(data_root, model_config_of(embedder.info), batch_size=4, num_workers=0)
    return pairwise_distance(extract_features(embedder, query)[0], extract_features(embedder, gallery)[0])


def test_eval_of_onnx_matches_checkpoint(exported, tiny_dataset):  # noqa: F811
    from graft_edge.evaluation import evaluate_embedder
    from graft_edge.runtime import load_embedder

    modalities, ckpt, out, result, _ = exported
    ref = evaluate_embedder(load_embedder(ckpt), tiny_dataset, batch_size=4)
    assert (ref["num_query"], ref["num_gallery"]) == (4, 8) and 0.0 < ref["mAP"] <= 1.0
    got = evaluate_embedder(load_embedder(out / "model.onnx"), tiny_dataset, batch_size=4)
    assert abs(ref["mAP"] - got["mAP"]) < 1e-3 and ref["R1"] == got["R1"] and ref["R5"] == got["R5"]
    fp32_dist = _distances(load_embedder(out / "model.onnx"), tiny_dataset)
    assert fp32_dist.std() > 0.1  # the gallery really is ranked: a tolerance on it means something
    for name in ("model.int8-static.onnx", "model.int8-dynamic.onnx", "model.fp16.onnx"):
        embedder = load_embedder(out / name)
        low = evaluate_embedder(embedder, tiny_dataset, batch_size=4)
        assert low["num_query"] == ref["num_query"] and low["num_gallery"] == ref["num_gallery"]
        assert abs(low["mAP"] - ref["mAP"]) <= MAP_TOLERANCE, (name, low["mAP"], ref["mAP"])
        assert abs(low["R1"] - ref["R1"]) <= 1 / ref["num_query"] + 1e-9, (name, low["R1"], ref["R1"])
        assert np.abs(_distances(embedder, tiny_dataset) - fp32_dist).max() < DISTANCE_TOLERANCE, name


@pytest.mark.skipif(not __import__("os").environ.get("GRAFT_EDGE_FULL_EXPORT"),
                    reason="full-size rgbnt100 export (~400 MB, several minutes on 2 cores): set GRAFT_EDGE_FULL_EXPORT=1")
def test_full_size_rgbnt100_parity(tmp_path):
    from dataclasses import replace

    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.config import get_preset
    from graft_edge.model import build_model

    cfg = get_preset("rgbnt100")
    cfg = replace(cfg, model=replace(cfg.model, pretrained=False))
    ckpt = save_checkpoint(tmp_path / "rgbnt100.pt", build_model(cfg.model, pretrained=False), cfg)
    result = export_model(ckpt, tmp_path / "out", ExportOptions())
    checks = result.get("onnx-fp32").parity["checks"]
    assert {c["batch"] for c in checks} == {1, 4} and max(c["max_abs_diff"] for c in checks) <= 1e-4
