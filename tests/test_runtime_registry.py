"""Runtime families: a new runtime is a table row, one builder and one backend; every format, TensorRT included,
is staged, opened through load_embedder and checked before anything lands under its final name."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from _export_fixtures import tiny_checkpoint_factory  # noqa: F401  (fixture)

from graft_edge import formats
from graft_edge.errors import GraftError
from graft_edge.export import ExportOptions, export_model
from graft_edge.export import builders as B
from graft_edge.runtime import RUNTIMES, RuntimeFamily, artefact_files, load_embedder, read_metadata, register
from graft_edge.runtime import tensorrt_backend as TB
from graft_edge.runtime.onnx_backend import OnnxEmbedder
from tests.test_export_trt import _fake_tensorrt, _Recorder

MODS = ("rgb", "nir")


# ------------------------------------------------------------------ a new runtime family, in three pieces

# 1. the table row: ONNX Runtime's own ORT file format (what ONNX Runtime Mobile loads), built from the FP32 ONNX
ORT_ROW = formats.Format("ort", "ort-fp32", ".ort", "fp32", "ort", "onnx", marker="1",
                         help="ONNX Runtime's ORT format (optimised graph, ONNX Runtime Mobile)")


# 2. its builder: ONNX Runtime writes the optimised graph of the checked FP32 ONNX in the ORT format
def build_ort(job: B.BuildInputs, src: Path | None, dst: Path) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(dst)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return {"ort_format": True}


# 3. its backend: ONNX Runtime opens .ort files like .onnx ones; the record comes from the sidecar
def open_ort(path: Path, device: str, threads: int | None, dtype: str):
    return OnnxEmbedder(path, device=device, threads=threads)


@pytest.fixture
def ort_runtime(monkeypatch):
    monkeypatch.setitem(formats.FORMATS, ORT_ROW.name, ORT_ROW)
    monkeypatch.setitem(B.BUILDERS, ORT_ROW.name, build_ort)
    register(RuntimeFamily("ort", (".ort",), open_ort))
    yield
    RUNTIMES.pop("ort", None)


def test_a_new_runtime_family_exports_checks_and_runs(ort_runtime, tiny_checkpoint_factory, tmp_path):  # noqa: F811
    ckpt = tiny_checkpoint_factory(MODS)
    result = export_model(ckpt, tmp_path / "out", ExportOptions(formats=("ort",)))
    art = result.get("ort-fp32")
    assert result.ok and art is not None and art.status == "ok"
    assert art.parity["max_abs_diff"] <= ExportOptions().tolerance  # checked through load_embedder like any format
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["export.json", "model.json",
                                                                                    "model.ort"]
    meta = read_metadata(out / "model.ort")
    assert meta["precision"] == "fp32" and meta["artefact"]["files"][0]["name"] == "model.ort"
    emb, ref = load_embedder(out / "model.ort"), load_embedder(ckpt)
    x = {m: np.random.default_rng(0).normal(size=(3, 3, *ref.info.img_size)).astype(np.float32) for m in MODS}
    assert np.allclose(emb.embed(x), ref.embed(x), atol=1e-4)
    assert artefact_files(out / "model.ort") == [out / "model.ort"]


def test_a_suffix_belongs_to_one_family():
    with pytest.raises(GraftError, match=r"suffix \.onnx already belongs to 'onnx'"):
        register(RuntimeFamily("other", (".onnx",), open_ort))


# ------------------------------------------------------------------ TensorRT goes through the same steps


@pytest.fixture
def fake_trt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0", _Recorder()))
    monkeypatch.setattr(TB, "nvidia_gpu_available", lambda: True)


def test_an_engine_that_fails_its_check_never_lands_under_its_name(fake_trt, tiny_checkpoint_factory,  # noqa: F811
                                                                   tmp_path):
    """The fake TensorRT 'builds' bytes that are no engine: opening it for the check fails, so it is quarantined."""
    out = tmp_path / "out"
    result = export_model(tiny_checkpoint_factory(MODS), out, ExportOptions(formats=("onnx", "trt-fp32")),
                          raise_on_failure=False)
    assert not result.ok and result.get("onnx-fp32").status == "ok"
    engine = result.get("trt-fp32")
    assert engine.status == "failed" and "cannot open it" in engine.message
    assert not (out / "model.trt-fp32.engine").exists() and not (out / "model.trt-fp32.json").exists()
    assert (out / "model.trt-fp32.engine.failed").read_bytes() == b"ENGINE-10.3.0"
    assert (out / "model.onnx").is_file() and (out / "model.json").is_file()


def test_a_missing_runtime_fails_its_format_alone(monkeypatch, tiny_checkpoint_factory, tmp_path):  # noqa: F811
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(TB, "nvidia_gpu_available", lambda: False)
    out = tmp_path / "out"
    result = export_model(tiny_checkpoint_factory(MODS), out, ExportOptions(formats=("onnx", "trt-fp32")),
                          raise_on_failure=False)
    assert result.get("onnx-fp32").status == "ok" and result.get("trt-fp32") is None
    assert len(result.failures) == 1 and "trt-fp32 cannot be built here" in result.failures[0]
    assert not list(out.glob("*.engine*"))
