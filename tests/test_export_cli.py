"""`graft-edge export` through typer's CliRunner: bad input exits 2 with one line and writes nothing;
a failed parity check exits 1 and keeps the file as *.failed; --trt without TensorRT says so plainly."""
from __future__ import annotations

import json

import pytest
from _export_fixtures import tiny_checkpoint_factory, tiny_dataset, write_dataset  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from graft_edge.cli.main import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def _one_error_line(result) -> str:
    text = result.output.strip()
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]


@pytest.mark.parametrize("extra, fragment", [
    (["--batch", "8:4:16"], "MIN <= OPT <= MAX"),
    (["--batch", "x"], "MIN:OPT:MAX"),
    (["--int8", "static"], "--int8 static needs --calib-data"),
    (["--formats", "openvino-int8"], "--formats openvino-int8 needs --calib-data"),
    (["--formats", "onnx,tflite"], "unknown format 'tflite'"),
    (["--formats", "torch"], "nothing to export"),
    (["--int8", "fast"], "expected dynamic, static, u8s8"),
    (["--opset", "17"], "opsets 18-25"),
    (["--opset", "30"], "opsets 18-25"),
    (["--tolerance", "0"], "--tolerance"),
    (["--calib-samples", "4"], "at least 16"),
    (["--calib-method", "magic"], "--calib-method"),
    (["--no-onnx"], "nothing to export"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, tiny_checkpoint_factory, extra, fragment):  # noqa: F811
    ckpt = tiny_checkpoint_factory(("rgb",))
    out = tmp_path / "out"
    result = _invoke(ckpt, "--out", out, *extra)
    assert result.exit_code == 2, result.output
    assert fragment in _one_error_line(result)
    assert not out.exists()


def test_missing_checkpoint_and_unwritable_out(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    result = _invoke(tmp_path / "nope.pt", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "does not exist" in _one_error_line(result)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ckpt = tiny_checkpoint_factory(("rgb",))
    for out in (blocker, blocker / "sub"):
        result = _invoke(ckpt, "--out", out)
        assert result.exit_code == 2, result.output
        assert "--out" in _one_error_line(result)


def test_calib_data_modalities_must_match(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    data = write_dataset(tmp_path / "rgbn", ("rgb", "nir"), n_train=4, n_gallery=2, n_query=1)
    ckpt = tiny_checkpoint_factory(("rgb", "nir", "tir"))
    result = _invoke(ckpt, "--out", tmp_path / "out", "--calib-data", data)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "holds modalities rgb,nir" in line and "missing tir" in line
    assert not (tmp_path / "out").exists()


def test_calibration_data_too_small(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    data = write_dataset(tmp_path / "small", ("rgb",), n_train=5, n_gallery=2, n_query=1)
    ckpt = tiny_checkpoint_factory(("rgb",))
    result = _invoke(ckpt, "--out", tmp_path / "out", "--int8", "static", "--calib-data", data)
    assert result.exit_code == 2
    assert "train split has 5 image(s)" in _one_error_line(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_failed_parity_exits_1_and_quarantines(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    ckpt = tiny_checkpoint_factory(("rgb",))
    out = tmp_path / "out"
    result = _invoke(ckpt, "--out", out, "--tolerance", "1e-15", "--int8", "dynamic")
    assert result.exit_code == 1, result.output
    assert "exceeds --tolerance 1e-15" in _one_error_line(result)
    assert (out / "model.onnx.failed").is_file()
    assert not (out / "model.onnx").exists() and not (out / "model.json").exists()
    assert not (out / "model.int8-dynamic.onnx").exists()  # nothing is derived from a failed FP32 model
    summary = json.loads((out / "export.json").read_text())
    assert not summary["ok"] and summary["artefacts"][0]["status"] == "failed"


@pytest.mark.slow
def test_trt_without_tensorrt_writes_onnx_and_says_what_is_missing(tmp_path, tiny_checkpoint_factory, monkeypatch):  # noqa: F811
    import sys

    from graft_edge.runtime import tensorrt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without the package
    monkeypatch.setattr(tensorrt_backend, "nvidia_gpu_available", lambda: False)
    ckpt = tiny_checkpoint_factory(("rgb", "nir"))
    out = tmp_path / "out"
    result = _invoke(ckpt, "--out", out, "--trt", "--batch", "1:4:16")
    assert result.exit_code == 1, result.output
    line = _one_error_line(result)
    assert "tensorrt package is not installed" in line and "no NVIDIA GPU" in line
    assert "artefacts were still written" in line and "model.onnx" in line
    assert (out / "model.onnx").is_file() and (out / "model.json").is_file()
    assert "model.onnx" in result.output and "ok" in result.output  # the summary table


def test_help_lists_every_option():
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for opt in ("--out", "--onnx", "--no-onnx", "--int8", "--fp16", "--trt", "--batch", "--calib-data", "--calib-samples",
                "--calib-method", "--opset", "--tolerance", "--min-cosine-int8", "--min-cosine-fp16", "--workspace",
                "--sparse-weights", "--name", "--json"):
        assert opt in result.output, opt
    assert "MiB" in result.output and "MIN:OPT:MAX" in result.output
