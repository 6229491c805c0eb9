"""graft_edge.workflows.frontier end to end on a tiny model and data set: real pruning, export, evaluation and
timing; resume, verification of reused artefacts, units of the report rows, latency-only mode."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _rank_bounds import assert_within, distances, metric_bounds
from conftest import int8_distance_tolerance

from graft_edge.checkpoint import load_model
from graft_edge.compress import parse_targets
from graft_edge.data.synthetic import write_synthetic
from graft_edge.errors import GraftError
from graft_edge.formats import parse_formats
from graft_edge.model import embedding_params
from graft_edge.profile.report import markdown_table
from graft_edge.runtime import load_embedder
from graft_edge.workflows import frontier as F
from graft_edge.workflows.frontier_state import STATE_FILE, STATE_VERSION, load_state
from graft_edge.workflows.records import resolve


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 ids x 2 cameras x 2 images of 16x32: query/gallery with matches, a train split to calibrate on."""
    root = tmp_path_factory.mktemp("data") / "syn"
    write_synthetic(root, ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


def _settings(**kw) -> F.FrontierSettings:
    base = dict(targets=("45%",), formats=("torch", "int8"), finetune_epochs=0, batch=2, iters=2, rounds=1,
                warmup=0, eval_batch_size=64, calib_samples=16)
    base.update(kw)
    return F.FrontierSettings(**base)


def test_parse_formats_and_targets():
    assert [f.name for f in parse_formats("torch, onnx,int8,onnx")] == ["torch", "onnx", "int8"]
    with pytest.raises(GraftError) as e:
        parse_formats("torch,tflite")
    assert "tflite" in str(e.value) and "int8-static" in str(e.value) and "trt" in str(e.value)
    assert [str(t) for t in parse_targets("80%, 70%")] == ["80%", "70%"]
    with pytest.raises(GraftError):
        parse_targets(" , ")


@pytest.mark.slow
def test_frontier_runs_resumes_and_verifies_what_it_reuses(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "fr"
    settings = _settings(targets=("70%", "45%"), formats=("torch", "onnx", "int8"))
    res = F.run_frontier(tiny_checkpoint, data, out, settings)
    dense = embedding_params(load_model(tiny_checkpoint)[0])
    rows = {(r["variant"], r["format"]): r for r in res.rows}
    assert list(rows)[:4] == [("dense", "torch"), ("dense", "onnx"), ("dense", "int8"), ("70%", "torch")]
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows.values())
    assert rows[("70%", "torch")]["params"] <= round(0.70 * dense) and rows[("45%", "torch")]["params"] <= round(0.45 * dense)
    assert rows[("dense", "torch")]["speedup"] == pytest.approx(1.0)
    state = load_state(out)
    for variant in ("dense", "70%", "45%"):  # each artefact's metrics: what its distance shift can do to the ranking
        rec = next(v for v in state.variants.values() if v.label == variant)
        ref_dist, query, gallery = distances(load_embedder(resolve(out, rec.path)), data, batch_size=64)
        for fmt, budget in (("torch", 0.0), ("onnx", 1e-4), ("int8", int8_distance_tolerance(0.1))):
            emb = load_embedder(resolve(out, rec.formats[fmt].path)) if fmt != "torch" else None
            shift = float(np.abs(distances(emb, data, batch_size=64)[0] - ref_dist).max()) if emb else 0.0
            assert shift <= budget, (variant, fmt, shift)
            assert_within(rows[(variant, fmt)], metric_bounds(ref_dist, shift, query, gallery), f"{variant}/{fmt}")

    doc = json.loads((out / "frontier.json").read_text())
    assert json.loads((out / STATE_FILE).read_text())["version"] == STATE_VERSION
    assert doc["schema_version"] == 2 and "per sample" in doc["units"]["p99_ms"]
    for r in doc["rows"]:  # every *_ms field of a row is per sample
        stats = state.latency.results[r["key"]]
        assert r["batch"] == stats["batch"] == 2
        for field, key in (("latency_ms", "p50_ms"), ("min_ms", "min_ms"), ("p90_ms", "p90_ms"), ("p99_ms", "p99_ms")):
            assert r[field] == pytest.approx(stats[key] / 2)
    flops = state.latency.flops
    assert flops["dense/torch"] == flops["dense/onnx"] == flops["dense/int8"] > flops[f"{state.order[-1]}/torch"] > 0
    for r in doc["rows"]:  # the roofline: FLOPs counted once per model / per-sample latency, precision of the file
        assert r["precision"] == {"torch": "fp32", "onnx": "fp32", "int8": "int8-dynamic"}[r["format"]]
        assert r["achieved_gflops"] == pytest.approx(flops[r["key"]] / (r["latency_ms"] / 1e3) / 1e9)
        assert r["peak_precision"] == ("int8" if r["format"] == "int8" else "fp32")
    with open(res.files["csv"]) as f:
        assert len(list(csv.DictReader(f))) == 9
    assert "ms/sample (batch 2)" in res.files["md"].read_text()
    assert res.files["png"].read_bytes()[:4] == b"\x89PNG"

    # a rerun reuses everything: nothing is pruned, exported, evaluated or timed again
    res2 = F.run_frontier(tiny_checkpoint, data, out, settings)
    assert res2.done == [] and "latency" in res2.skipped
    assert [r["mAP"] for r in res2.rows] == [r["mAP"] for r in res.rows]

    # a truncated artefact is not trusted: it is exported and evaluated again, and everything re-timed
    vname = next(k for k, v in state.variants.items() if v.label == "70%")
    onnx = out / state.variants[vname].formats["onnx"].path
    onnx.write_bytes(onnx.read_bytes()[:100])
    res3 = F.run_frontier(tiny_checkpoint, data, out, settings)
    assert f"{vname}/onnx" in res3.done and "latency" in res3.done and len(res3.done) == 2
    assert next(r for r in res3.rows if r["key"] == f"{vname}/onnx")["size_bytes"] > 100

    # a deleted variant checkpoint is pruned again and all of its formats are redone
    (out / state.variants[vname].path).unlink()
    res4 = F.run_frontier(tiny_checkpoint, data, out, settings)
    assert f"{vname}: pruned" in res4.done and {f"{vname}/{f}" for f in ("torch", "onnx", "int8")} <= set(res4.done)


def test_frontier_reports_failed_formats_and_retries_them(tiny_checkpoint, data, tmp_path, monkeypatch):
    """TensorRT made absent (its import fails, on machines that have it too): its format fails with one line in the
    report and is attempted again on rerun."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    out = tmp_path / "fr"
    res = F.run_frontier(tiny_checkpoint, data, out, _settings(formats=("torch", "trt-fp32")))
    bad = [r for r in res.rows if r["status"] != "ok"]
    assert [r["format"] for r in bad] == ["trt-fp32", "trt-fp32"] and "tensorrt package is not" in bad[0]["status"]
    assert all(r["status"] == "ok" and r["mAP"] is not None for r in res.rows if r["format"] == "torch")
    res2 = F.run_frontier(tiny_checkpoint, data, out, _settings(formats=("torch", "trt-fp32")))
    assert not any("trt-fp32" in s for s in res2.skipped) and "dense/torch" in res2.skipped


def test_frontier_refuses_other_settings_and_bad_targets(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "fr"
    F.run_frontier(tiny_checkpoint, data, out, _settings(formats=("torch",)))
    with pytest.raises(GraftError, match="finetune_epochs"):
        F.run_frontier(tiny_checkpoint, data, out, _settings(formats=("torch",), finetune_epochs=2))
    with pytest.raises(GraftError, match="not below"):
        F.run_frontier(tiny_checkpoint, data, tmp_path / "b", _settings(targets=("100%",)))
    with pytest.raises(GraftError, match="same size"):
        F.run_frontier(tiny_checkpoint, data, tmp_path / "c", _settings(targets=("45%", "45.0%")))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(GraftError, match="PyTorch checkpoint"):
        F.run_frontier(onnx, data, tmp_path / "d", _settings())
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before writing anything


def test_latency_only_frontier_without_data_then_with_it(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "lat"
    res = F.run_frontier(tiny_checkpoint, None, out, _settings())
    assert len(res.rows) == 4 and all(r["mAP"] is None and r["latency_ms"] > 0 for r in res.rows)
    assert {"csv", "json", "md"} <= set(res.files) and "png" not in res.files
    with pytest.raises(GraftError, match="needs --data"):
        F.run_frontier(tiny_checkpoint, None, tmp_path / "x", _settings(finetune_epochs=1))
    with pytest.raises(GraftError, match="int8-static needs --data"):
        F.run_frontier(tiny_checkpoint, None, tmp_path / "y", _settings(formats=("torch", "int8-static")))
    # with --data later, the same OUT gets its mAPs; nothing is pruned or exported again
    res2 = F.run_frontier(tiny_checkpoint, data, out, _settings())
    assert not any(d.endswith(": pruned") for d in res2.done) and all(r["mAP"] is not None for r in res2.rows)
    assert "png" in res2.files


def test_markdown_table_formats_percent_and_errors():
    rows = [{"variant": "dense", "params": 102_380_000, "format": "torch", "size_bytes": 4e8, "status": "ok",
             "mAP": 0.766, "R1": 0.943, "R5": 0.97, "R10": 0.98, "batch": 1, "latency_ms": 950.0, "speedup": 1.0,
             "pareto": True, "achieved_gflops": 106.42, "peak_precision": "fp32", "share_of_peak": 0.554},
            {"variant": "60M", "params": 60e6, "format": "trt", "size_bytes": None, "status": "error: no GPU"}]
    md = markdown_table(rows)
    assert "| dense | 102.38M | torch | 400.00 | 76.6 | 94.3 | 97.0 | 98.0 | - | - | - | - | 950.000 | 1.00x | 106.4 | 55 fp32 | * |" in md
    assert "trt (error: no GPU)" in md


def test_frontier_cli_unknown_format_one_line(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    r = CliRunner().invoke(app, ["frontier", str(tiny_checkpoint), "--targets", "50%", "--data", str(tmp_path),
                                 "--out", str(tmp_path / "o"), "--formats", "torch,tflite"])
    assert r.exit_code == 2 and "unknown format 'tflite'" in r.output and "torch, onnx, int8" in r.output
    assert "Traceback" not in r.output


def test_frontier_cli_runs_and_reuses(tiny_checkpoint, data, tmp_path):
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    args = ["frontier", str(tiny_checkpoint), "--targets", "45%", "--data", str(data), "--out", str(tmp_path / "o"),
            "--formats", "torch", "--batch", "2", "--iters", "2", "--rounds", "1", "--warmup", "0",
            "--finetune-epochs", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "dense" in r.output and "45%" in r.output and "frontier.png" in r.output
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "reused" in r.output


def test_frontier_rerank_adds_reranked_accuracy_to_existing_rows(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "fr"
    plain = F.run_frontier(tiny_checkpoint, data, out, _settings(formats=("torch",)))
    assert all(r["mAP_rerank"] is None for r in plain.rows)
    res = F.run_frontier(tiny_checkpoint, data, out, _settings(formats=("torch",), rerank=True))
    assert not any(d.endswith(": pruned") for d in res.done)  # only re-evaluated, nothing pruned again
    for before, after in zip(plain.rows, res.rows):
        assert after["mAP"] == pytest.approx(before["mAP"]) and 0.0 < after["mAP_rerank"] <= 1.0
        assert 0.0 <= after["R1_rerank"] <= 1.0
    with open(res.files["csv"]) as f:
        assert all(row["mAP_rerank"] for row in csv.DictReader(f))


def test_frontier_robustness_adds_the_worst_sensor_subset_measured_on_each_artefact(tiny_checkpoint, data, tmp_path):
    from graft_edge.evaluation import evaluate_embedder
    from graft_edge.runtime import load_embedder

    out = tmp_path / "fr"
    plain = F.run_frontier(tiny_checkpoint, data, out, _settings())
    assert all(r["worst_mAP"] is None for r in plain.rows)
    res = F.run_frontier(tiny_checkpoint, data, out, _settings(robustness=True))
    assert not any(d.endswith(": pruned") for d in res.done)  # only re-evaluated, nothing pruned or exported again
    state = load_state(out)
    labels = {"rgb", "nir", "tir", "rgb+nir", "rgb+tir", "nir+tir", "rgb+nir+tir"}
    for r in res.rows:
        acc = state.variants[r["key"].split("/")[0]].formats[r["format"]].accuracy
        assert {"+".join(s["modalities"]) for s in acc["subsets"]} == labels
        assert r["worst_mAP"] == min(s["mAP"] for s in acc["subsets"]) <= r["mAP"] and r["worst_subset"] in labels
    # the worst subset's number is that artefact's own mAP with only those sensors
    row = next(r for r in res.rows if r["variant"] != "dense" and r["format"] == "int8")
    path = out / row["artefact"]
    alone = evaluate_embedder(load_embedder(path, modalities=row["worst_subset"].split("+")), data, batch_size=64)
    assert alone["mAP"] == pytest.approx(row["worst_mAP"], abs=1e-9)
    with open(res.files["csv"]) as f:
        assert all(float(line["worst_mAP"]) == pytest.approx(r["worst_mAP"], abs=1e-5) and line["worst_subset"]
                   for line, r in zip(csv.DictReader(f), res.rows))
    assert "worst subset mAP" in res.files["md"].read_text()
    assert json.loads(res.files["json"].read_text())["rows"][0]["worst_subset"] in labels
    with pytest.raises(GraftError, match="--robustness evaluates every subset"):
        F.run_frontier(tiny_checkpoint, data, out, _settings(robustness=True, modalities=("rgb",)))
