"""OpenVINO formats: IR export (FP32, bf16, NNCF INT8) checked through OpenVINO, the runtime, eval, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _export_fixtures import tiny_checkpoint_factory, tiny_dataset  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from graft_edge import cpu
from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.evaluation import evaluate_embedder
from graft_edge.export import ExportOptions, export_model
from graft_edge.formats import FORMATS
from graft_edge.inputs import random_images
from graft_edge.runtime import artefact_files, artefact_size, load_embedder, runtime_of

pytest.importorskip("openvino")
pytest.importorskip("nncf")
MODS = ("rgb", "nir", "tir")
MODES = ("fp32", "bf16", "int8") if cpu.has_bf16() else ("fp32", "int8")


@pytest.fixture(scope="module")
def ir_export(tmp_path_factory, tiny_checkpoint_factory, tiny_dataset):  # noqa: F811
    ckpt = tiny_checkpoint_factory(MODS)
    out = tmp_path_factory.mktemp("ov")
    result = export_model(ckpt, out, ExportOptions(formats=tuple(f"openvino-{m}".replace("-fp32", "") for m in MODES), calib_data=tiny_dataset,
                                                   calib_samples=16))
    return ckpt, out, result


def test_every_requested_ir_is_written_checked_and_described(ir_export):
    _, out, result = ir_export
    assert result.ok and not (out / "model.onnx").exists()  # --no-onnx: the FP32 ONNX is the staged source only
    for mode in MODES:
        name = {"fp32": "openvino"}.get(mode, f"openvino-{mode}")
        fmt = FORMATS[name]
        xml = out / f"model{fmt.suffix}"
        art = result.get(fmt.kind)
        assert art.status == "ok" and art.files == [xml, xml.with_suffix(".bin")]
        assert artefact_files(xml) == art.files and artefact_size(xml) == art.size_bytes
        meta = json.loads(xml.with_suffix(".json").read_text())
        assert meta["precision"] == fmt.precision and meta["modalities"] == list(MODS)
        assert [f["name"] for f in meta["artefact"]["files"]] == [xml.name, xml.with_suffix(".bin").name]
        assert runtime_of(xml) == "openvino"
    fp32 = result.get("openvino-fp32").parity
    assert fp32["max_abs_diff"] < 1e-4  # FP32 IR matches PyTorch like the FP32 ONNX does


def test_int8_is_nncf_quantised_and_close_to_fp32(ir_export):
    _, out, result = ir_export
    meta = json.loads((out / "model.openvino-int8.json").read_text())
    q = meta["quantization"]
    assert q["model_type"] == "transformer" and q["calibration_samples"] == 16 and q["fake_quantize_ops"] > 0
    assert meta["judged_on"] == "real" and meta["cosine_vs_fp32"]["real"]["min_cosine"] >= 0.98
    # INT8 weights: the .bin is much smaller than the FP32 IR's
    assert (out / "model.openvino-int8.bin").stat().st_size < 0.6 * (out / "model.openvino.bin").stat().st_size


@pytest.mark.skipif(not cpu.has_bf16(), reason="needs a CPU with AVX512-BF16 or AMX")
def test_bf16_ir_runs_with_the_bf16_hint(ir_export):
    _, out, result = ir_export
    emb = load_embedder(out / "model.openvino-bf16.xml", threads=1)
    assert emb.info.extra["inference_precision_hint"] == "bf16"
    assert emb.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    assert result.get("openvino-bf16").parity["max_abs_diff"] > 0  # really rounded, not run in FP32
    assert (out / "model.openvino-bf16.bin").stat().st_size < 0.6 * (out / "model.openvino.bin").stat().st_size


def test_embedder_matches_pytorch_and_evaluates_like_the_checkpoint(ir_export, tiny_dataset):  # noqa: F811
    ckpt, out, _ = ir_export
    torch_emb = load_embedder(ckpt, threads=1)
    ov_emb = load_embedder(out / "model.openvino.xml", threads=1)
    assert ov_emb.info.format == "openvino" and ov_emb.info.extra["inference_precision_hint"] == "f32"
    assert ov_emb.info.params_embedding == torch_emb.info.params_embedding
    x = random_images(MODS, torch_emb.info.img_size, 3)
    np.testing.assert_allclose(ov_emb.embed(x), torch_emb.embed(x), atol=1e-4)
    if ov_emb.presence_input:  # a missing sensor: the IR's presence mask gives PyTorch's subset embedding
        two = {m: x[m] for m in MODS[:2]}
        np.testing.assert_allclose(ov_emb.embed(two), torch_emb.embed(two), atol=1e-4)
    a = evaluate_embedder(torch_emb, tiny_dataset, batch_size=8)
    b = evaluate_embedder(ov_emb, tiny_dataset, batch_size=8)
    assert abs(a["mAP"] - b["mAP"]) < 1e-6 and a["R1"] == b["R1"]
    with pytest.raises(GraftError, match=r"input 'rgb' has shape .*expected \(B, 3, 32, 64\)"):
        ov_emb.embed({m: np.zeros((1, 3, 64, 32), np.float32) for m in MODS})


def test_missing_sidecar_or_bin_is_one_line(ir_export, tmp_path):
    _, out, _ = ir_export
    lone = tmp_path / "model.openvino.xml"
    lone.write_bytes((out / "model.openvino.xml").read_bytes())
    with pytest.raises(GraftError, match="no metadata sidecar model.openvino.json"):
        load_embedder(lone)
    (tmp_path / "model.openvino.json").write_text((out / "model.openvino.json").read_text())
    with pytest.raises(GraftError, match="model.openvino.bin must sit beside it"):
        load_embedder(lone)


@pytest.mark.parametrize("options, fragment", [
    ({"formats": ("openvino-int8",)}, "--formats openvino-int8 needs --calib-data"),
    ({"formats": ("openvino-fp8",)}, "unknown format 'openvino-fp8'"),
    ({"formats": ("openvino",), "min_cosine_bf16": 2.0}, "--min-cosine-bf16 2.0"),
])
def test_bad_openvino_options_are_one_line(options, fragment):
    with pytest.raises(GraftError, match=fragment):
        ExportOptions(**options).validated()


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ["avx2", "avx512f"])
    with pytest.raises(GraftError, match="--formats openvino-bf16: this CPU .* neither AVX512-BF16 nor AMX"):
        ExportOptions(formats=("openvino-bf16",)).validated()


def test_cli_export_openvino(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint_factory(MODS)), "--out", str(tmp_path),
                                   "--openvino", "fp32", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    kinds = {a["kind"]: a["status"] for a in doc["artefacts"]}
    assert kinds == {"onnx-fp32": "ok", "openvino-fp32": "ok"}
    assert (tmp_path / "model.openvino.bin").is_file()
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint_factory(MODS)), "--out", str(tmp_path / "x"),
                                   "--openvino", "int8"])
    assert res.exit_code == 2 and "--openvino int8 needs --calib-data" in res.output


def test_frontier_takes_the_ir_like_any_format(tiny_checkpoint, tmp_path):
    from graft_edge.data.synthetic import write_synthetic
    from graft_edge.workflows import frontier as F

    data = tmp_path / "syn"
    write_synthetic(data, ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    settings = F.FrontierSettings(targets=("60%",), formats=("torch", "openvino"), finetune_epochs=0, batch=2,
                                  iters=2, rounds=1, warmup=0, eval_batch_size=64, calib_samples=16)
    res = F.run_frontier(tiny_checkpoint, data, tmp_path / "fr", settings)
    rows = {(r["variant"], r["format"]): r for r in res.rows}
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    for variant in ("dense", "60%"):
        ir = rows[(variant, "openvino")]
        assert ir["artefact"].endswith(".openvino.xml") and ir["precision"] == "fp32" and ir["achieved_gflops"] > 0
        assert ir["mAP"] == pytest.approx(rows[(variant, "torch")]["mAP"], abs=1e-6)
    res2 = F.run_frontier(tiny_checkpoint, data, tmp_path / "fr", settings)  # .xml + .bin fingerprints hold
    assert res2.done == []
