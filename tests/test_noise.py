"""The one rule for calling a variant better or worse than dense (workflows.noise), on hand numbers, and the words
the frontier and the demo build on it: never better or worse within the noise."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft_edge.checkpoint import read_checkpoint
from graft_edge.cli.demo import headline_line
from graft_edge.cli.main import app
from graft_edge.evaluation import evaluate_embedder, evaluate_val
from graft_edge.runtime import load_embedder
from graft_edge.workflows import demo as D
from graft_edge.workflows.noise import SINGLE_SEED_FLOOR, judge, judge_rows, mark_vs_dense, summary


@pytest.mark.parametrize("value, ref, std, ref_std, pooled, verdict, noise", [
    (0.755, 0.80, 0.03, 0.04, None, "within noise", 0.05),  # |-4.5| <= sqrt(3^2 + 4^2) = 5 points
    (0.74, 0.80, 0.03, 0.04, None, "worse", 0.05),
    (0.86, 0.80, 0.03, 0.04, None, "better", 0.05),
    (0.78, 0.80, 0.03, None, 0.04, "within noise", 0.05),  # dense without a std takes the pooled one
    (0.70, 0.80, None, None, None, "worse", SINGLE_SEED_FLOOR),  # single seed: the stated floor
    (0.78, 0.80, None, None, None, "within noise", SINGLE_SEED_FLOOR),
    (0.80, 0.80, 0.0, 0.0, None, "within noise", 0.0),
])
def test_judge_on_hand_numbers(value, ref, std, ref_std, pooled, verdict, noise) -> None:
    j = judge(value, ref, std, ref_std, pooled)
    assert j.verdict == verdict and j.noise == pytest.approx(noise) and j.diff == pytest.approx(value - ref)
    assert j.single_seed == (std is None and ref_std is None and pooled is None)


def test_words_rank_only_beyond_the_noise() -> None:
    assert judge(None, 0.8) is None and judge(0.8, None) is None
    within = judge(0.774, 0.80, 0.02, 0.02).words()
    assert within == "within noise of dense (-2.6 points; noise 2.8)"
    assert judge(0.70, 0.80, 0.02, 0.02).words() == "10.0 points below dense (noise 2.8)"
    assert judge(0.85, 0.80).words() == "5.0 points above dense (single-seed floor 3.0)"


def _rows(maps: dict[str, tuple[float, float | None]]) -> list[dict]:
    return [{"variant": v, "format": "torch", "status": "ok", "mAP": m, "mAP_std": s} for v, (m, s) in maps.items()]


def test_rows_and_summary_never_rank_within_noise() -> None:
    rows = _rows({"dense": (0.80, None), "70%": (0.82, 0.02), "45%": (0.70, 0.02), "35%": (0.85, 0.01)})
    mark_vs_dense(rows)
    # pooled std of the variants sqrt((4 + 4 + 1) / 3) = sqrt(3) points stands in for dense's
    assert rows[1]["mAP_noise"] == pytest.approx(math.sqrt(0.02 ** 2 + 0.0003))
    assert [r.get("mAP_vs_dense") for r in rows] == [None, "within noise", "worse", "better"]
    text = summary(rows)
    assert "within noise of dense: 70% torch" in text and "worse than dense: 45% torch" in text
    assert "better than dense: 35% torch" in text and "70% torch" not in text.split("within noise")[0]
    assert "sqrt(std^2 + dense std^2)" in text
    single = _rows({"dense": (0.80, None), "70%": (0.82, None), "45%": (0.70, None)})
    assert [j.verdict for j in judge_rows(single).values()] == ["within noise", "worse"]
    assert "(single seed)" in summary(single) and "differences under 3 points" in summary(single)


def test_demo_headline_is_the_fastest_artefact_within_noise() -> None:
    rows = [
        {"variant": "dense", "format": "torch", "status": "ok", "params": 100, "latency_ms": 8.0, "mAP": 0.80,
         "mAP_std": None, "batch": 64, "speedup_min": 1.0},
        {"variant": "70%", "format": "int8", "status": "ok", "params": 70, "latency_ms": 3.0, "mAP": 0.79,
         "mAP_std": 0.01, "speedup_min": 2.5, "batch": 64},
        {"variant": "70%", "format": "onnx", "status": "ok", "params": 70, "latency_ms": 4.0, "mAP": 0.81,
         "mAP_std": 0.01, "speedup_min": 1.9, "batch": 64},
        {"variant": "45%", "format": "int8", "status": "ok", "params": 45, "latency_ms": 1.6, "mAP": 0.60,
         "mAP_std": 0.01, "speedup_min": 4.5, "batch": 64},
    ]
    h = D.headline(rows)
    assert (h["variant"], h["format"], h["within_noise"], h["verdict"]) == ("70%", "int8", True, "within noise")
    assert h["speedup"] == pytest.approx(8 / 3) and h["goal_met"] is False
    line = headline_line("synthetic model", h, "at this width")
    assert "fastest within noise of dense: pruned INT8 (70%" in line and "within noise of dense (-1.0 points" in line
    assert not re.search(r"\b(better|worse|above|below) dense", line)
    rows[1]["mAP"] = rows[2]["mAP"] = 0.70  # nothing within noise: the smallest INT8, and the words say how far
    h = D.headline(rows)
    assert (h["variant"], h["within_noise"], h["verdict"]) == ("45%", False, "worse") and h["goal_met"] is True
    line = headline_line("synthetic model", h, "at this width")
    assert "no pruned artefact is within noise of dense; smallest pruned INT8 (45%" in line
    assert "20.0 points below dense" in line
    latency_only = [dict(r, mAP=None, mAP_std=None) for r in rows]
    h = D.headline(latency_only)
    assert h["variant"] == "45%" and h["vs_dense"] is None
    assert "pruned INT8 (45%" in headline_line("x", h, "here") and "mAP" not in headline_line("x", h, "here")


def test_frontier_reports_val_and_test_and_words_within_noise(tiny_val_inputs: tuple[Path, Path], tmp_path: Path,
                                                              one_thread: None) -> None:
    model, data = tiny_val_inputs
    out = tmp_path / "fr"
    res = CliRunner().invoke(app, ["frontier", str(model), "--targets", "80%", "--data", str(data), "--out", str(out),
                                   "--formats", "torch", "--finetune-epochs", "1", "--seeds", "2", "--batch", "2",
                                   "--iters", "2", "--rounds", "1", "--warmup", "0"])
    assert res.exit_code == 0, res.output
    rows = {r["variant"]: r for r in json.loads((out / "frontier.json").read_text())["rows"]}
    dense, v = rows["dense"], rows["80%"]
    for r in (dense, v):
        assert 0 <= r["val_mAP"] <= 1 and 0 <= r["mAP"] <= 1
    # validation (held-out training ids) beside test (query/gallery): dense's row holds each split's own metrics
    emb, cfg = load_embedder(model), read_checkpoint(model).config
    assert dense["val_mAP"] == pytest.approx(evaluate_val(emb, data, cfg, batch_size=128)["val_mAP"])
    assert dense["mAP"] == pytest.approx(evaluate_embedder(emb, data, batch_size=128)["mAP"])
    seeds = json.loads((out / "frontier.json").read_text())["seed_rows"]
    vals = [r["val_mAP"] for r in seeds if r["variant"] == "80%"]
    assert v["val_mAP"] == pytest.approx(sum(vals) / 2) and v["n_seeds"] == 2
    j = judge(v["mAP"], dense["mAP"], v["mAP_std"], None, v["mAP_std"])
    assert v["mAP_vs_dense"] == j.verdict and v["mAP_noise"] == pytest.approx(j.noise)
    with open(out / "frontier.csv") as f:
        assert float(next(r for r in csv.DictReader(f) if r["variant"] == "80%")["val_mAP"]) == pytest.approx(
            v["val_mAP"], rel=1e-4)
    md = (out / "frontier.md").read_text()
    text = " ".join(res.output.split())
    for words in (md, text):
        assert "mAP vs dense" in words and "sqrt(std^2 + dense std^2)" in words
        if j.verdict == "within noise":
            assert "within noise of dense: 80% torch" in words and not re.search(r"(better|worse) than dense:", words)
        else:
            assert f"{j.verdict} than dense: 80% torch" in words
