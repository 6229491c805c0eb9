"""Missing sensors: every exported format computes PyTorch's embedding for any non-empty subset of its modalities."""
from __future__ import annotations

import json
from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest
import torch
from _export_fixtures import make_checkpoint, tiny_checkpoint_factory, tiny_dataset  # noqa: F401  (fixtures)
from conftest import int8_min_cosine
from typer.testing import CliRunner

from graft_edge.checkpoint import load_model
from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.export.calibration import load_parity_images
from graft_edge.export.pipeline import ExportOptions, export_model
from graft_edge.profile.bench import BenchSettings, bench_models
from graft_edge.runtime import load_embedder
from graft_edge.runtime.presence import embed_rows, presence_feeds

runner = CliRunner()
MODS = ("rgb", "nir", "tir")
ALL_SUBSETS = [c for k in range(1, 4) for c in combinations(MODS, k)]
FILES = {"fp32": "model.onnx", "int8-dynamic": "model.int8-dynamic.onnx", "int8-static": "model.int8-static.onnx",
         "fp16": "model.fp16.onnx"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint_factory, tiny_dataset):  # noqa: F811
    ckpt = tiny_checkpoint_factory(MODS)
    out = tmp_path_factory.mktemp("missing")
    opts = ExportOptions(formats=("onnx", "int8", "int8-static", "fp16"), calib_data=tiny_dataset, calib_samples=16)
    result = export_model(ckpt, out, opts)
    model, _ = load_model(ckpt)
    real = load_parity_images(tiny_dataset, MODS, (32, 64), model.cfg.mean, model.cfg.std, 8)
    return ckpt, out, result, model.eval(), real


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(FILES))
@pytest.mark.parametrize("subset", ALL_SUBSETS, ids=lambda s: "+".join(s))
def test_every_subset_matches_pytorch(exported, precision, subset):
    ckpt, out, _, model, real = exported
    batch = {m: real[m] for m in subset}
    with torch.no_grad():
        ref = model.embed({m: torch.from_numpy(x) for m, x in batch.items()}).numpy()
    got = load_embedder(out / FILES[precision], threads=1).embed(batch)
    if precision == "fp32":
        assert np.abs(got - ref).max() <= 1e-4
    else:
        cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        floor = 0.999 if precision == "fp16" else int8_min_cosine()
        assert cos.min() >= floor, (precision, subset, cos.min())
    if len(subset) < 3:  # a missing sensor really changes the embedding (it is not ignored)
        full = load_embedder(out / FILES[precision], threads=1).embed(real)
        assert np.abs(full - got).max() > 1e-3


@pytest.mark.slow
def test_export_checks_parity_of_every_subset(exported):
    _, out, result, _, _ = exported
    assert result.ok, result.failures
    for art in result.artefacts:
        subsets = {c["modalities"] for c in art.parity["checks"]}
        assert subsets == {"all", "rgb", "nir", "tir", "rgb+nir", "rgb+tir", "nir+tir"}, art.kind
        reals = [c for c in art.parity["checks"] if c["inputs"] == "real"]
        if art.precision == "fp32":
            assert all(c["max_abs_diff"] <= 1e-4 for c in reals), art.kind
        else:
            floor = 0.999 if art.precision == "fp16" else int8_min_cosine()
            assert all(c["min_cosine"] >= floor for c in reals), art.kind
    meta = json.loads((out / "model.int8-static.json").read_text())
    assert meta["presence_input"] == "present" and meta["input_names"] == ["rgb", "nir", "tir", "present"]


@pytest.mark.slow
def test_per_sample_mask_equals_per_subset_embeddings(exported):
    ckpt, out, _, model, real = exported
    present = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 1]], bool)
    for path in (ckpt, out / "model.onnx"):
        emb = load_embedder(path, threads=1)
        got = embed_rows(emb, real, present)
        for i, row in enumerate(present):
            sub = {m: real[m][i:i + 1] for m, on in zip(MODS, row) if on}
            with torch.no_grad():
                ref = model.embed({m: torch.from_numpy(x) for m, x in sub.items()}).numpy()
            assert np.abs(got[i] - ref[0]).max() <= 1e-4, (path.name, i)


@pytest.mark.slow
def test_eval_with_modalities_on_onnx_equals_checkpoint(exported, tiny_dataset, tmp_path):  # noqa: F811
    ckpt, out, _, _, _ = exported
    got = {}
    for name, path in (("pt", ckpt), ("onnx", out / "model.onnx")):
        res = runner.invoke(app, ["eval", str(path), "--data", str(tiny_dataset), "--modalities", "nir,rgb",
                                  "--json", str(tmp_path / f"{name}.json")])
        assert res.exit_code == 0, res.output
        got[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert got["onnx"]["modalities"] == ["rgb", "nir"]
    for key in ("mAP", "R1", "R5"):
        assert abs(got["onnx"][key] - got["pt"][key]) <= 1e-6
    assert got["pt"]["num_query"] == 4
    res = runner.invoke(app, ["eval", str(ckpt), "--data", str(tiny_dataset), "--modalities", "rgb,uv"])
    assert res.exit_code == 2 and "'uv' is not one of this model's modalities rgb,nir,tir" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt", "fp32", "int8-dynamic"])
def test_eval_every_subset_equals_eval_of_each_subset(exported, tiny_dataset, tmp_path, fmt):  # noqa: F811
    """`eval --modalities all` (one pass per split, a checkpoint's backbone once per batch) gives, for every subset S,
    the numbers of `eval --modalities S` run on its own."""
    ckpt, out, _, _, _ = exported
    path = ckpt if fmt == "pt" else out / FILES[fmt]
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(path), "--data", str(tiny_dataset), "--modalities", "all", "--json",
                              str(tmp_path / "all.json")])
    assert res.exit_code == 0, res.output
    printed = res.output
    table = json.loads((tmp_path / "all.json").read_text())
    assert [tuple(r["modalities"]) for r in table["subsets"]] == ALL_SUBSETS
    for row in table["subsets"]:
        res = runner.invoke(app, ["eval", str(path), "--data", str(tiny_dataset), "--modalities",
                                  ",".join(row["modalities"]), "--json", str(tmp_path / "one.json")])
        assert res.exit_code == 0, res.output
        one = json.loads((tmp_path / "one.json").read_text())
        for key in ("mAP", "R1", "R5", "R10", "num_query", "num_gallery"):
            assert row[key] == pytest.approx(one[key], abs=1e-9), (row["modalities"], key)
    worst = min(table["subsets"], key=lambda r: r["mAP"])
    assert table["worst"] == {"modalities": worst["modalities"], "mAP": worst["mAP"], "R1": worst["R1"]}
    assert table["mAP"] == table["subsets"][-1]["mAP"]
    assert f"worst subset: {'+'.join(worst['modalities'])} (mAP {100 * worst['mAP']:.2f}" in printed
    assert len({round(r["mAP"], 6) for r in table["subsets"]}) > 1  # the subsets really differ


@pytest.mark.slow
def test_bench_every_subset_reports_the_table_and_times_every_sensor(exported, tiny_dataset):  # noqa: F811
    _, out, _, _, _ = exported
    report = bench_models([out / "model.int8-dynamic.onnx"], BenchSettings(iters=2, warmup=1, threads=1,
                                                                            modalities=("all",), data=str(tiny_dataset)))
    r = report["results"][0]
    assert r["status"] == "ok" and r["modalities"] == list(MODS)
    acc = r["accuracy"]
    assert [tuple(s["modalities"]) for s in acc["subsets"]] == ALL_SUBSETS
    assert acc["worst"]["mAP"] == min(s["mAP"] for s in acc["subsets"]) and acc["mAP"] == acc["subsets"][-1]["mAP"]


@pytest.mark.slow
def test_bench_with_modalities_times_the_subset(exported):
    _, out, _, _, _ = exported
    report = bench_models([out / "model.int8-dynamic.onnx"], BenchSettings(iters=2, warmup=1, threads=1,
                                                                            modalities=("tir",)))
    r = report["results"][0]
    assert r["status"] == "ok" and r["modalities"] == ["tir"] and report["settings"]["modalities"] == ["tir"]


@pytest.mark.slow
def test_model_without_presence_input_says_so(tmp_path):
    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.model import build_model

    _, ckpt = load_model(make_checkpoint(tmp_path / "token.pt", MODS))
    cfg = replace(ckpt.config, model=replace(ckpt.config.model, fusion="cls"))  # one encoder over every modality
    save_checkpoint(tmp_path / "vanilla.pt", build_model(cfg.model).eval(), cfg)
    export_model(tmp_path / "vanilla.pt", tmp_path / "exp", ExportOptions())
    meta = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert "presence_input" not in meta and meta["input_names"] == list(MODS)
    with pytest.raises(GraftError, match="needs all of rgb,nir,tir \\(no presence-mask input"):
        load_embedder(tmp_path / "exp" / "model.onnx", modalities="rgb")
    emb = load_embedder(tmp_path / "exp" / "model.onnx")
    x = np.zeros((1, 3, 32, 64), np.float32)
    with pytest.raises(GraftError, match="needs every modality .* missing tir"):
        emb.embed({"rgb": x, "nir": x})
    assert load_embedder(tmp_path / "vanilla.pt", modalities="rgb").embed({"rgb": x}).shape == (1, 32)


@pytest.mark.parametrize("batch,mask,message", [
    ({}, None, "no input modality given"),
    ({"uv": 1}, None, "'uv' is not one of m.onnx's modalities"),
    ({"rgb": np.zeros((2, 3, 4, 4), np.float32)}, None, "has shape \\(2, 3, 4, 4\\): expected \\(B, 3, 8, 8\\)"),
    ({"rgb": np.zeros((2, 3, 8, 8), np.float32), "nir": np.zeros((3, 3, 8, 8), np.float32)}, None,
     "different batch sizes \\[2, 3\\]"),
    ({"rgb": np.array([["a"]])}, None, "dtype <U1: expected float32"),
    ({"rgb": np.zeros((2, 3, 8, 8), np.float32)}, np.ones((2, 2)), "shape \\(2, 2\\): expected \\(2, 3\\)"),
    ({"rgb": np.zeros((2, 3, 8, 8), np.float32)}, np.full((2, 3), 0.5), "values other than 0 and 1"),
    ({"rgb": np.zeros((2, 3, 8, 8), np.float32)}, np.array([[1, 0, 0], [0, 1, 1]]), "sample 1 has no modality"),
])
def test_presence_feeds_rejects_bad_batches(batch, mask, message):
    if mask is not None:
        batch = {**batch, "present": mask}
    with pytest.raises(GraftError, match=message):
        presence_feeds(batch, MODS, (8, 8), "present", "m.onnx")


def test_presence_feeds_zero_fills_and_masks():
    x = np.ones((2, 3, 8, 8), np.float32)
    feeds = presence_feeds({"nir": x, "present": np.array([[1, 1, 0], [0, 1, 0]])}, MODS, (8, 8), "present", "m")
    assert list(feeds) == ["rgb", "nir", "tir", "present"]
    assert not feeds["rgb"].any() and not feeds["tir"].any() and feeds["nir"].all()
    np.testing.assert_array_equal(feeds["present"], [[0, 1, 0], [0, 1, 0]])  # absent inputs are never present


def test_frontier_re_evaluates_a_record_of_another_subset(tmp_path):
    from graft_edge.workflows.frontier import _needs_work
    from graft_edge.workflows.frontier_state import FormatRecord

    (tmp_path / "m.onnx").write_bytes(b"graph")
    rec = FormatRecord(status="ok", accuracy={"mAP": 0.5, "modalities": None})
    rec.record(tmp_path, tmp_path / "m.onnx")
    assert not _needs_work(rec, tmp_path, tmp_path)
    assert _needs_work(rec, tmp_path, tmp_path, modalities=("rgb", "nir"))
    rec.accuracy["modalities"] = ["rgb", "nir"]
    assert not _needs_work(rec, tmp_path, tmp_path, modalities=("rgb", "nir")) and _needs_work(rec, tmp_path, tmp_path)


def test_graph_inputs_must_be_the_metadata_modalities_or_the_mask(tmp_path) -> None:
    from graft_edge.artefact.embedder import EmbedderInfo
    from graft_edge.runtime.presence import check_graph_inputs

    info = EmbedderInfo(format="onnx", path="m.onnx", modalities=("rgb", "nir"), img_size=(32, 64),
                        mean=(0.5,) * 3, std=(0.5,) * 3, embed_dim=8, params_embedding=1, params_nonzero=1,
                        extra={"presence_input": "present"})
    assert check_graph_inputs(["rgb", "nir", "present"], info, tmp_path / "m.onnx") == "present"
    with pytest.raises(GraftError, match="graph input 'tir' is not one of its metadata's modalities rgb,nir"):
        check_graph_inputs(["rgb", "tir", "present"], info, tmp_path / "m.onnx")


@pytest.mark.parametrize("modalities, needle", [
    ("sonar", "--modalities 'sonar': unknown modality 'sonar'"),
    ("", "--modalities '': unknown modality ''"),
    ("tir", "'tir' is not one of this model's modalities rgb,nir"),
])
def test_frontier_checks_modalities_before_pruning(tiny_checkpoint_factory, tiny_dataset, tmp_path,  # noqa: F811
                                                  monkeypatch, modalities, needle):
    import graft_edge.workflows.chain as chain

    def no_work(*args, **kwargs):
        raise AssertionError("a variant was pruned before --modalities was checked")

    monkeypatch.setattr(chain, "run_prune", no_work)
    ckpt = tiny_checkpoint_factory(("rgb", "nir"))
    res = runner.invoke(app, ["frontier", str(ckpt), "--targets", "80%", "--data", str(tiny_dataset), "--out",
                              str(tmp_path / "f"), "--modalities", modalities, "--formats", "torch"])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and needle in line and len(res.output.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize("modalities, needle", [("", "--modalities '': unknown modality ''"),
                                                ("rgb,sonar", "--modalities 'rgb,sonar': unknown modality 'sonar'")])
def test_bench_refuses_an_empty_or_unknown_modality_list(tiny_checkpoint_factory, monkeypatch, modalities,  # noqa: F811
                                                         needle):
    import graft_edge.cli.bench as cli_bench

    def no_work(*args, **kwargs):
        raise AssertionError("models timed before --modalities was checked")

    monkeypatch.setattr(cli_bench, "bench_models", no_work)
    res = runner.invoke(app, ["bench", str(tiny_checkpoint_factory(MODS)), "--iters", "1", "--modalities", modalities])
    assert res.exit_code == 2 and needle in " ".join(res.output.split()), res.output
