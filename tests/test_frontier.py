"""graft_edge.profile.frontier / report: resumable loop (with fakes for the heavy pieces), reports, Pareto."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from graft_edge.errors import GraftError
from graft_edge.profile import frontier as F
from graft_edge.profile.report import markdown_table, pareto_front


def test_pareto_front():
    pts = [(10, 0.5), (5, 0.5), (5, 0.4), (1, 0.1), (20, 0.9), (None, 0.99), (3, None)]
    assert pareto_front(pts) == [False, True, False, True, True, False, False]
    assert pareto_front([(1, 1), (1, 1)]) == [True, True]  # ties do not dominate each other


def test_parse_formats_and_targets():
    assert F.parse_formats("torch, onnx,int8,onnx") == ("torch", "onnx", "int8")
    with pytest.raises(GraftError) as e:
        F.parse_formats("torch,tflite")
    assert "tflite" in str(e.value) and "int8-static" in str(e.value) and "trt" in str(e.value)
    assert F.parse_targets("80%, 70%") == ("80%", "70%")
    with pytest.raises(GraftError):
        F.parse_targets(" , ")


class Calls:
    def __init__(self):
        self.prune, self.export, self.eval, self.fail_export = [], [], [], set()


@pytest.fixture
def fakes(monkeypatch, tiny_checkpoint):
    """Replace pruning, export, evaluation and model loading by fast fakes that record their calls."""
    from graft_edge.runtime.base import EmbedderInfo

    calls = Calls()

    def prune(prev, dest, target, settings, data_root, progress, label):
        calls.prune.append(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(prev, dest)
        return {"params": target, "params_nonzero": target, "seconds": 0.0, "finetune": [], "steps": 1}

    def export(ckpt, export_dir, formats, settings, data_root, progress, label):
        calls.export.append((ckpt.parent.name, tuple(formats)))
        export_dir.mkdir(parents=True, exist_ok=True)
        out = {}
        for f in formats:
            if (ckpt.parent.name, f) in calls.fail_export:
                out[f] = {"status": "error: parity check failed", "error": "parity check failed"}
                continue
            p = export_dir / f"model.{f}.onnx"
            p.write_bytes(b"x" * 100)
            out[f] = {"status": "ok", "error": None, "artefact": str(p), "parity": {}}
        return out

    def evaluate(path, settings, data_root, progress, label):
        calls.eval.append(label)
        size = path.stat().st_size
        return {"mAP": 0.5 + 1e-7 * size, "R1": 0.6, "R5": 0.8, "R10": 0.9, "num_query": 1, "num_gallery": 2}

    class Fake:
        info = EmbedderInfo(format="onnx", path="x", modalities=("rgb",), img_size=(4, 4), mean=(0.5,) * 3,
                            std=(0.5,) * 3, embed_dim=2, params_embedding=1, params_nonzero=1)

        def __init__(self, path):
            self.delay = 0.0005 if str(path).endswith(".pt") else 0.0001

        def embed(self, batch):
            import time

            time.sleep(self.delay)
            return np.zeros((next(iter(batch.values())).shape[0], 2), np.float32)

    monkeypatch.setattr(F, "_prune_variant", prune)
    monkeypatch.setattr(F, "_export_formats", export)
    monkeypatch.setattr(F, "_evaluate", evaluate)
    monkeypatch.setattr("graft_edge.runtime.load_embedder", lambda path, device="cpu", threads=None: Fake(path))
    monkeypatch.setattr("graft_edge.data.dataset_modalities", lambda root: ("rgb", "nir", "tir"))
    return calls


def _settings(**kw):
    base = dict(targets=("70%", "45%"), formats=("torch", "onnx", "int8"), finetune_epochs=0, batch=2, iters=2,
                rounds=2, warmup=0)
    base.update(kw)
    return F.FrontierSettings(**base)


def test_frontier_runs_then_resume_skips_finished(fakes, tiny_checkpoint, tmp_path):
    out = tmp_path / "fr"
    res = F.run_frontier(tiny_checkpoint, tmp_path, out, _settings())
    from graft_edge.model import embedding_params
    from graft_edge.checkpoint import load_model

    dense = embedding_params(load_model(tiny_checkpoint)[0])
    assert fakes.prune == [round(dense * 0.70), round(dense * 0.45)]  # largest first, each from the previous
    assert len(fakes.eval) == 9 and len(fakes.export) == 3
    assert [(r["variant"], r["format"]) for r in res.rows][:4] == [("dense", "torch"), ("dense", "onnx"),
                                                                    ("dense", "int8"), ("70%", "torch")]
    assert all(r["status"] == "ok" and r["latency_ms"] and r["speedup"] for r in res.rows)
    assert res.rows[0]["speedup"] == pytest.approx(1.0)
    for name in ("csv", "json", "md", "png"):
        assert res.files[name].is_file()
    state = json.loads((out / F.STATE_FILE).read_text())
    assert state["latency"]["keys"] and len(state["latency"]["results"]) == 9

    # rerun: nothing is pruned, exported, evaluated or timed again
    fakes.prune.clear(), fakes.export.clear(), fakes.eval.clear()
    res2 = F.run_frontier(tiny_checkpoint, tmp_path, out, _settings())
    assert fakes.prune == [] and fakes.export == [] and fakes.eval == []
    assert "latency" in res2.skipped and res2.done == []
    assert [r["mAP"] for r in res2.rows] == [r["mAP"] for r in res.rows]

    # a new format: only it is exported and evaluated; every artefact is re-timed side by side
    res3 = F.run_frontier(tiny_checkpoint, tmp_path, out, _settings(formats=("torch", "onnx", "int8", "fp16")))
    assert fakes.prune == [] and [f for _, f in fakes.export] == [("fp16",)] * 3 and len(fakes.eval) == 3
    assert "latency" in res3.done and len(res3.rows) == 12


def test_frontier_retries_failed_pieces_and_reports_them(fakes, tiny_checkpoint, tmp_path):
    out = tmp_path / "fr"
    fakes.fail_export.add(("t" + str(round(0.45 * 315072)), "int8"))
    res = F.run_frontier(tiny_checkpoint, tmp_path, out, _settings())
    bad = [r for r in res.rows if r["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["format"] == "int8" and bad[0]["variant"] == "45%"
    assert "parity check failed" in (out / "frontier.md").read_text()
    fakes.fail_export.clear(), fakes.export.clear(), fakes.eval.clear()
    res2 = F.run_frontier(tiny_checkpoint, tmp_path, out, _settings())
    assert fakes.export == [(bad[0]["key"].split("/")[0], ("int8",))] and len(fakes.eval) == 1
    assert all(r["status"] == "ok" for r in res2.rows)


def test_frontier_refuses_other_settings_and_bad_targets(fakes, tiny_checkpoint, tmp_path):
    out = tmp_path / "fr"
    F.run_frontier(tiny_checkpoint, tmp_path, out, _settings(targets=("45%",)))
    with pytest.raises(GraftError, match="finetune_epochs"):
        F.run_frontier(tiny_checkpoint, tmp_path, out, _settings(targets=("45%",), finetune_epochs=2))
    F.run_frontier(tiny_checkpoint, tmp_path, out, _settings(targets=("45%",), finetune_epochs=2), overwrite=True)
    with pytest.raises(GraftError, match="not below"):
        F.run_frontier(tiny_checkpoint, tmp_path, tmp_path / "b", _settings(targets=("100%",)))
    with pytest.raises(GraftError, match="same size"):
        F.run_frontier(tiny_checkpoint, tmp_path, tmp_path / "c", _settings(targets=("45%", "45.0%")))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(GraftError, match="PyTorch checkpoint"):
        F.run_frontier(onnx, tmp_path, tmp_path / "d", _settings())


def test_reports_contents(fakes, tiny_checkpoint, tmp_path):
    out = tmp_path / "fr"
    res = F.run_frontier(tiny_checkpoint, tmp_path, out, _settings(targets=("45%",)))
    with open(res.files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {"params", "mAP", "R1", "R5", "R10", "latency_ms", "speedup", "size_bytes"} <= set(rows[0])
    md = res.files["md"].read_text()
    assert "| Variant | Parameters | Format |" in md and "| mAP | R1 | R5 | R10 |" in md and "ms/sample (batch 2)" in md
    doc = json.loads(res.files["json"].read_text())
    assert doc["schema"] == "graft-edge/frontier" and len(doc["rows"]) == 6 and doc["settings"]["method"] == "structured"
    assert res.files["png"].read_bytes()[:4] == b"\x89PNG"


def test_markdown_table_formats_percent_and_errors():
    rows = [{"variant": "dense", "params": 102_380_000, "format": "torch", "size_bytes": 4e8, "status": "ok",
             "mAP": 0.766, "R1": 0.943, "R5": 0.97, "R10": 0.98, "batch": 1, "latency_ms": 950.0, "speedup": 1.0,
             "pareto": True},
            {"variant": "60M", "params": 60e6, "format": "trt", "size_bytes": None, "status": "error: no GPU"}]
    md = markdown_table(rows)
    assert "| dense | 102.38M | torch | 400.00 | 76.6 | 94.3 | 97.0 | 98.0 | 950.000 | 1.00x | * |" in md
    assert "trt (error: no GPU)" in md


def test_frontier_cli_unknown_format_one_line(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    r = CliRunner().invoke(app, ["frontier", str(tiny_checkpoint), "--targets", "50%", "--data", str(tmp_path),
                                 "--out", str(tmp_path / "o"), "--formats", "torch,tflite"])
    assert r.exit_code == 2 and "unknown format 'tflite'" in r.output and "torch, onnx, int8" in r.output
    assert "Traceback" not in r.output


def test_frontier_cli_with_fakes(fakes, tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    args = ["frontier", str(tiny_checkpoint), "--targets", "45%", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
            "--batch", "2", "--iters", "2", "--rounds", "1", "--warmup", "0", "--finetune-epochs", "0"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "dense" in r.output and "45%" in r.output and "frontier.png" in r.output
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "reused" in r.output


def test_latency_only_frontier_without_data(fakes, tiny_checkpoint, tmp_path):
    out = tmp_path / "lat"
    res = F.run_frontier(tiny_checkpoint, None, out, _settings())
    assert fakes.eval == [] and len(fakes.prune) == 2
    assert len(res.rows) == 9 and all(r["mAP"] is None and r["latency_ms"] > 0 for r in res.rows)
    assert {"csv", "json", "md"} <= set(res.files) and "png" not in res.files
    with pytest.raises(GraftError, match="needs --data"):
        F.run_frontier(tiny_checkpoint, None, tmp_path / "x", _settings(finetune_epochs=1))
    with pytest.raises(GraftError, match="int8-static needs --data"):
        F.run_frontier(tiny_checkpoint, None, tmp_path / "y", _settings(formats=("torch", "int8-static")))
    # with --data later, the same OUT gets its mAPs; nothing is pruned or exported again
    res2 = F.run_frontier(tiny_checkpoint, tmp_path, out, _settings())
    assert len(fakes.eval) == 9 and len(fakes.prune) == 2 and all(r["mAP"] is not None for r in res2.rows)
    assert "png" in res2.files
