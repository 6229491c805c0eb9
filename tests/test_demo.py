"""`graft-edge demo --fast` end to end (real data, training, pruning, export, evaluation, timing), shrunk further."""
from __future__ import annotations

import json

import pytest

from graft_edge.workflows import demo as D
from graft_edge.workflows.frontier import FrontierSettings


def test_headline_speedup_goal_is_conservative():
    rows = [
        {"variant": "dense", "format": "torch", "status": "ok", "params": 100, "latency_ms": 8.0, "val_mAP": 0.9,
         "batch": 64, "speedup_min": 1.0},
        {"variant": "70%", "format": "int8", "status": "ok", "params": 70, "latency_ms": 3.0, "val_mAP": 0.9,
         "val_mAP_vs_dense": "equivalent", "speedup_min": 2.5, "batch": 64},
        {"variant": "45%", "format": "int8", "status": "ok", "params": 45, "latency_ms": 1.6, "val_mAP": 0.89,
         "val_mAP_vs_dense": "equivalent", "speedup_min": 3.5, "batch": 64},
    ]
    h = D.headline(rows)
    assert h["variant"] == "45%" and h["speedup"] == pytest.approx(5.0) and h["basis"] == "equivalent"
    assert h["goal_met"] is False  # best-of-N says 3.5x: the p50 5x alone does not count
    rows[2]["speedup_min"] = 4.2
    assert D.headline(rows)["goal_met"] is True
    assert D.headline(rows[:1]) is None


@pytest.mark.parametrize("share, words", [(0.2, "overhead-bound"), (0.6, "compute-bound"), (None, None)])
def test_headline_says_which_regime_it_measures(share, words):
    from graft_edge.cli.demo import headline_line

    rows = [{"variant": "dense", "format": "torch", "status": "ok", "params": 100, "latency_ms": 8.0, "batch": 64,
             "share_of_peak": 0.1, "peak_precision": "fp32"},
            {"variant": "45%", "format": "int8", "status": "ok", "params": 45, "latency_ms": 2.0, "batch": 64,
             "share_of_peak": share, "peak_precision": "int8" if share else None}]
    h = D.headline(rows)
    assert h["regime"] == words and h["share_of_peak"] == share and h["dense_share_of_peak"] == 0.1
    line = headline_line("synthetic model", h, "at this width")
    if share is None:
        assert "shape-true" not in line  # no peak known: no regime claimed
    else:
        assert f"at {100 * share:.0f}% of its int8 shape-true GEMM peak ({words}), dense at 10% of fp32" in line


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    # the scale check on the synthetic architecture instead of DeiT-B: the same code path, in seconds
    tiny = D.DemoSettings(ids=20, cameras=4, images_per_camera=2, max_steps=1, frontier=FrontierSettings(
        targets=("45%",), formats=("torch", "int8"), finetune_epochs=0, batch=8, iters=2, rounds=1, warmup=0,
        calib_samples=16, eval_batch_size=64), scale_preset="synthetic", scale=FrontierSettings(
        targets=("45%",), formats=("torch", "int8"), finetune_epochs=0, batch=1, iters=2, rounds=1, warmup=0))
    monkeypatch.setattr(D.DemoSettings, "fast", staticmethod(lambda: tiny))
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "--fast", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "frontier.png" in r.output and "faster than the dense PyTorch model" in r.output
    for f in ("frontier.csv", "frontier.md", "frontier.json", "frontier.png"):
        assert (out / "frontier" / f).is_file()
    summary = json.loads((out / "demo.json").read_text())
    h = summary["headline"]
    assert h["variant"] == "45%" and h["speedup"] > 0 and 0 <= h["mAP"] <= 1
    s = summary["scale_headline"]  # latency only: random weights, no dataset
    assert s["variant"] == "45%" and s["speedup"] > 0 and s["mAP"] is None and s["batch"] == 1
    assert "synthetic architecture (latency only): pruned INT8" in r.output
    for f in ("frontier.csv", "frontier.md", "frontier.json"):
        assert (out / "scale" / "frontier" / f).is_file()
    rows = json.loads((out / "frontier" / "frontier.json").read_text())["rows"]
    assert {(r["variant"], r["format"]) for r in rows} == {("dense", "torch"), ("dense", "int8"), ("45%", "torch"),
                                                           ("45%", "int8")}
    # a rerun reuses everything
    r2 = CliRunner().invoke(app, ["demo", "--fast", "--out", str(out)])
    assert r2.exit_code == 0 and "reusing the trained model" in r2.output


def test_auto_threads_drops_to_one_on_a_busy_machine(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 4.0, 3.0))
    threads, why = D.auto_threads()
    assert threads == 1 and "busy" in why and "--threads" in why
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    assert D.auto_threads() == (None, "")
