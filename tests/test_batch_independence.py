"""Batch independence: the format table's column, what it claims about real artefacts, and who reads it."""
from __future__ import annotations

import numpy as np
import pytest
from _export_fixtures import make_checkpoint, write_dataset
from typer.testing import CliRunner

from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.export.pipeline import ExportOptions, export_model
from graft_edge.formats import (
    FORMATS,
    batch_dependence_note,
    batch_dependent_format,
    batch_dependent_formats,
    batch_independent_formats,
)
from graft_edge.runtime import load_embedder
from graft_edge.serve.server import ServeOptions, check_models

MODS = ("rgb", "nir", "tir")


def test_only_dynamic_int8_depends_on_its_batch_mates():
    assert set(batch_dependent_formats()) == {"int8", "int8-fused"}
    assert set(batch_independent_formats()) == set(FORMATS) - {"int8", "int8-fused"}
    assert batch_dependent_format("onnx", "int8-dynamic") is FORMATS["int8"]
    for runtime, precision in (("onnx", "fp32"), ("onnx", "int8-static"), ("torch", "fp32"), ("torch", "bf16"),
                               ("openvino", "int8-static"), ("tensorrt", "int8")):
        assert batch_dependent_format(runtime, precision) is None and batch_dependence_note("m", runtime, precision) is None
    note = batch_dependence_note("exp/m.onnx", "onnx", "int8-dynamic")
    assert note.startswith("exp/m.onnx is int8 (int8-dynamic)") and "int8-static" in note and "openvino-int8" in note
    assert "int8-fused" not in note.split("batch-independent formats:")[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint exported to FP32 ONNX and dynamic INT8."""
    out = tmp_path_factory.mktemp("bi")
    ckpt = make_checkpoint(out / "tiny.pt", MODS)
    assert export_model(ckpt, out / "exp", ExportOptions(formats=("onnx", "int8"))).ok
    return out / "exp"


@pytest.mark.slow
def test_the_column_is_what_the_artefacts_do(exported):
    """A sample embedded alone and beside loud batch-mates: equal for FP32, different for dynamic INT8."""
    rng = np.random.default_rng(0)
    sample = {m: rng.standard_normal((1, 3, 32, 64), dtype=np.float32) for m in MODS}
    mates = {m: 8 * rng.standard_normal((7, 3, 32, 64), dtype=np.float32) for m in MODS}
    batch = {m: np.concatenate([sample[m], mates[m]]) for m in MODS}
    diffs = {}
    for name in ("onnx", "int8"):
        embedder = load_embedder(exported / f"model{FORMATS[name].suffix}")
        diffs[name] = float(np.abs(embedder.embed(sample)[0] - embedder.embed(batch)[0]).max())
    assert diffs["onnx"] <= 1e-5 and diffs["int8"] > 1e-3, diffs


@pytest.mark.slow
def test_serve_refuses_batch_dependent_artefacts_unless_allowed(exported):
    int8 = exported / "model.int8-dynamic.onnx"
    res = CliRunner().invoke(app, ["serve", str(int8)])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "model.int8-dynamic.onnx is int8 (int8-dynamic)" in text and "batch-independent formats: torch, onnx" in text
    assert "--allow-batch-dependent" in text
    logged: list[str] = []
    models = check_models([int8, exported / "model.onnx"], ServeOptions(allow_batch_dependent=True), logged.append)
    assert list(models) == ["model.int8-dynamic", "model"] and len(logged) == 1 and logged[0].startswith("warning:")
    with pytest.raises(GraftError, match="depends on the other samples"):
        check_models([int8], ServeOptions())


@pytest.mark.slow
def test_index_build_warns_for_batch_dependent_artefacts(exported, tmp_path):
    data = write_dataset(tmp_path / "ds", MODS)
    for name, warned in (("model.int8-dynamic.onnx", True), ("model.onnx", False)):
        res = CliRunner().invoke(app, ["index", "build", str(exported / name), str(data), "--out",
                                       str(tmp_path / f"index-{name}")])
        assert res.exit_code == 0, res.output
        assert ("depends on the other samples in the same batch" in " ".join(res.output.split())) == warned
