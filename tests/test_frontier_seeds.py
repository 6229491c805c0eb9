"""frontier --seeds N: the mean ± std aggregation on hand numbers, and a real two-seed frontier on a tiny model."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.checkpoint import read_checkpoint
from graft_edge.data.synthetic import write_synthetic
from graft_edge.errors import GraftError
from graft_edge.profile.report import markdown_table
from graft_edge.workflows import frontier as F
from graft_edge.workflows.frontier_seeds import aggregate_rows, mean_std, noise_band, seed_variant_name
from graft_edge.workflows.frontier_state import load_state


@pytest.mark.parametrize("values, expected", [
    ([0.5, 0.7, 0.9], (0.7, 0.2, 3)),
    ([1.0, 3.0], (2.0, math.sqrt(2.0), 2)),
    ([0.5, None], (0.5, None, 1)),  # one measurement: no spread
    ([], (None, None, 0)),
])
def test_mean_and_sample_std(values: list, expected: tuple) -> None:
    mean, std, n = mean_std(values)
    assert n == expected[2]
    assert mean == pytest.approx(expected[0]) if expected[0] is not None else mean is None
    assert std == pytest.approx(expected[1]) if expected[1] is not None else std is None


def _row(variant: str, seed: int, mAP: float | None, status: str = "ok", **kw) -> dict:
    return {"variant": variant, "format": "torch", "seed": seed, "mAP": mAP, "R1": None if mAP is None else mAP + 0.1,
            "status": status, **kw}


def test_aggregate_rows_on_hand_numbers() -> None:
    rows = [_row("dense", 0, 0.80, latency_ms=2.0),
            _row("70%", 0, 0.60, latency_ms=1.0), _row("70%", 1, 0.80, latency_ms=None),
            _row("70%", 2, None, status="error: failed"),  # a failed seed does not count
            _row("45%", 1, 0.50), _row("45%", 0, 0.40, latency_ms=0.5)]
    agg = {r["variant"]: r for r in aggregate_rows(rows)}
    assert list(agg) == ["dense", "70%", "45%"]
    assert agg["dense"]["mAP"] == pytest.approx(0.80) and agg["dense"]["mAP_std"] is None
    assert agg["dense"]["n_seeds"] == 1
    r = agg["70%"]
    assert r["mAP"] == pytest.approx(0.70) and r["mAP_std"] == pytest.approx(math.sqrt(0.02))
    assert r["R1"] == pytest.approx(0.80) and r["R1_std"] == pytest.approx(math.sqrt(0.02))
    assert r["n_seeds"] == 2 and r["seeds"] == [0, 1, 2] and r["latency_ms"] == 1.0  # latency of seed 0
    assert agg["45%"]["latency_ms"] == 0.5 and agg["45%"]["mAP"] == pytest.approx(0.45)
    # dense has one measurement: its band is the pooled (RMS) std of the variants
    assert noise_band(list(agg.values()), "torch") == pytest.approx(math.sqrt((0.02 + 0.005) / 2))
    md = markdown_table(list(agg.values()))
    assert "| 70% | - | torch | - | 70.0 ± 14.1 | 80.0 ± 14.1 | - | - | - | - | - | 2 |" in md


def test_seed_variant_names_and_order() -> None:
    assert seed_variant_name("t100", 0) == "t100" and seed_variant_name("t100", 2) == "t100-s2"
    names = ["t50-s1", "t100-s1", "t50", "dense", "t100"]
    assert sorted(names, key=F._order_key) == ["dense", "t100", "t100-s1", "t50", "t50-s1"]


def test_seeds_need_finetuning() -> None:
    with pytest.raises(GraftError, match="--seeds 2 needs --finetune-epochs"):
        F.FrontierSettings(targets=("70%",), finetune_epochs=0, seeds=2).validated()
    with pytest.raises(GraftError, match="--seeds 0"):
        F.FrontierSettings(targets=("70%",), seeds=0).validated()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "syn"
    write_synthetic(root, ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


def test_two_seed_frontier_reports_mean_and_std(tiny_checkpoint_4ids: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "fr"
    settings = F.FrontierSettings(targets=("70%",), formats=("torch",), finetune_epochs=1, seeds=2, batch=2,
                                  iters=2, rounds=1, warmup=0, eval_batch_size=64)
    res = F.run_frontier(tiny_checkpoint_4ids, data, out, settings)
    state = load_state(out)
    names = state.order
    assert names[0] == "dense" and names[2] == names[1] + "-s1" and len(names) == 3
    assert [state.variants[n].seed for n in names] == [0, 0, 1]
    w0, w1 = (read_checkpoint(out / "variants" / n / "model.pt").state_dict for n in names[1:])
    assert w0.keys() == w1.keys() and any(not torch.equal(w0[k], w1[k]) for k in w0)  # other finetuning seeds
    assert state.latency.keys == ["dense/torch", f"{names[1]}/torch"]  # the seeds share seed 0's architecture

    maps = [state.variants[n].formats["torch"].accuracy["mAP"] for n in names[1:]]
    rows = {r["variant"]: r for r in res.rows}
    assert rows["70%"]["n_seeds"] == 2 and rows["70%"]["mAP"] == pytest.approx(sum(maps) / 2)
    assert rows["70%"]["mAP_std"] == pytest.approx(abs(maps[0] - maps[1]) / math.sqrt(2))
    assert rows["dense"]["n_seeds"] == 1 and rows["dense"]["mAP_std"] is None
    assert rows["70%"]["latency_ms"] and rows["70%"]["speedup"]
    with open(out / "frontier.csv") as f:
        csv_rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["70%"]["mAP_std"]) == pytest.approx(rows["70%"]["mAP_std"], rel=1e-4)
    assert csv_rows["70%"]["n_seeds"] == "2"
    report = json.loads((out / "frontier.json").read_text())
    assert [r["seed"] for r in report["seed_rows"]] == [0, 0, 1] and "mean ± sample std over 2" in report["note"]
    assert "±" in (out / "frontier.md").read_text() and (out / "frontier.png").stat().st_size > 0

    again = F.run_frontier(tiny_checkpoint_4ids, data, out, settings)  # everything reused
    assert again.done == [] and again.rows == res.rows
    one = F.run_frontier(tiny_checkpoint_4ids, data, out, replace(settings, seeds=1))  # fewer seeds: reported on seed 0 only
    r70 = next(r for r in one.rows if r["variant"] == "70%")
    assert one.done == [] and r70["n_seeds"] == 1 and r70["mAP"] == pytest.approx(maps[0])


def test_frontier_cli_seeds_without_finetuning_is_one_line(tiny_checkpoint_4ids: Path, data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    res = CliRunner().invoke(app, ["frontier", str(tiny_checkpoint_4ids), "--targets", "70%", "--data", str(data), "--out",
                                   str(tmp_path / "fr"), "--finetune-epochs", "0", "--seeds", "3"])
    assert res.exit_code == 2 and "--seeds 3 needs --finetune-epochs" in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output and not (tmp_path / "fr").exists()
