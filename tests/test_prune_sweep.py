"""The size sweep (benchmarks/prune_sweep.py over graft_edge.workflows.sweep): seeds aggregated to mean ± std on
known numbers, judged against dense by graft_edge.verdicts, and a tiny real run that resumes."""
from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.checkpoint import save_checkpoint
from graft_edge.errors import GraftError
from graft_edge.model import build_model
from graft_edge.verdicts import welch
from graft_edge.workflows.sweep import SweepSettings, run_sweep, run_sweeps
from graft_edge.workflows.sweep_report import recovery_lines, sweep_markdown, sweep_rows


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from graft_edge.checkpoint import read_checkpoint

    return read_checkpoint(path).state_dict


def _row(cond: str, level: str, seed: int, m: float, v: float) -> dict:
    return {"condition": cond, "level": level, "seed": seed, "params_embedding": 1000, "params_nonzero": 900,
            "mAP": m, "R1": m, "R5": m, "R10": m, "val_mAP": v, "val_R1": v, "val_R5": v, "val_R10": v}


def test_seed_rows_aggregate_to_mean_and_sample_std() -> None:
    seed_rows = [_row("dense", "100%", 0, 0.80, 0.90)]
    seed_rows += [_row("structured+ft", "45%", s, m, v) for s, (m, v) in enumerate([(0.70, 0.80), (0.72, 0.86),
                                                                                      (0.74, 0.83)])]
    seed_rows += [_row("structured+ft+kd", "45%", s, m, 0.9) for s, m in enumerate([0.76, 0.78, 0.80])]
    seed_rows += [_row("structured", "45%", 0, 0.30, 0.35)]
    rows = sweep_rows(seed_rows, ["45%"])
    assert [(r["condition"], r["level"]) for r in rows] == [("dense", "100%"), ("structured+ft", "45%"),
                                                            ("structured+ft+kd", "45%"), ("structured", "45%")]
    ft = rows[1]
    assert ft["mAP"] == pytest.approx(0.72) and ft["mAP_std"] == pytest.approx(0.02) and ft["n_seeds"] == 3
    assert ft["val_mAP"] == pytest.approx(0.83) and ft["val_mAP_std"] == pytest.approx(0.03)
    assert ft["kept"] == pytest.approx(0.9) and ft["seeds"] == [0, 1, 2]
    # one dense model: each seed's difference from it (-10, -8, -6 points), t-interval on 2 degrees of freedom
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert ft["mAP_diff"] == pytest.approx(-0.08) and ft["mAP_vs_dense"] == "worse"
    assert (ft["mAP_diff_low"], ft["mAP_diff_high"]) == pytest.approx((-0.08 - half, -0.08 + half), rel=1e-5)
    kd = rows[2]  # -4, -2, 0 points: the interval holds 0 and leaves the ±1 margin; 7 seeds would decide at sd 2
    assert kd["mAP_vs_dense"] == "inconclusive" and kd["mAP_seeds_needed"] == 7
    assert rows[3]["mAP_std"] is None and rows[3]["n_seeds"] == 1 and rows[3]["mAP_vs_dense"] == "inconclusive"
    md = sweep_markdown(rows)
    assert "| structured+ft | 45% | 1.0K | 0.9K | 83.0 ± 3.0 | 83.0 ± 3.0 | 72.0 ± 2.0 |" in md
    assert "| worse -8.0 [-13.0, -3.0] |" in md and "| inconclusive -2.0 [-7.0, +3.0] (~7 seeds) |" in md
    assert "| inconclusive -50.0 |" in md and "within noise" not in md
    # distillation recovers 6 of the 8 points plain finetuning loses, on every seed (paired: no spread at all)
    (line,) = recovery_lines(rows, seed_rows=seed_rows)
    assert line == ("45%: finetuning alone is 8.0 points below dense; distillation changes test mAP by +6.0 "
                    "(75% of it): better than finetuning alone: +6.0 points, 95% interval [+6.0, +6.0] "
                    "(paired t, 3 seeds).")


def test_tiny_sweep_runs_every_seed_chain_and_resumes(tiny_val_inputs: tuple[Path, Path], tmp_path: Path,
                                                      one_thread: None) -> None:
    model, data = tiny_val_inputs
    # 50% is below what structured pruning reaches on this model (62%): every chain ends after 70%
    settings = SweepSettings(levels=("85%", "70%", "50%"), conditions=("structured", "structured+ft",
                                                                       "structured+ft+kd"), seeds=2, finetune_epochs=1)
    res = run_sweep(model, data, tmp_path / "sweep", settings)
    assert len(res.seed_rows) == 1 + 2 + 2 * 2 * 2  # dense, no-ft once, two finetuned conditions x 2 seeds x 2 levels
    by = {(r["condition"], r["level"]): r for r in res.rows}
    assert by[("structured", "70%")]["n_seeds"] == 1 and by[("structured+ft", "70%")]["n_seeds"] == 2
    assert not any(r["level"] == "50%" for r in res.rows)
    for r in res.rows:  # validation and test both measured, on different query sets
        assert 0 <= r["val_mAP"] <= 1 and 0 <= r["mAP"] <= 1
    ft = [r for r in res.seed_rows if r["condition"] == "structured+ft" and r["level"] == "70%"]
    assert len(ft) == 2
    s0, s1 = (load_state(tmp_path / "sweep" / "chains" / "structured+ft" / f"s{k}" / "70pct.pt") for k in (0, 1))
    assert s0.keys() == s1.keys() and not all(torch.equal(s0[k], s1[k]) for k in s0)  # the seeds finetune differently
    assert (tmp_path / "sweep" / "sweep.md").read_text().count("| structured") == 6
    again = run_sweep(model, data, tmp_path / "sweep", settings)
    assert not again.done and again.rows == res.rows
    # a chain level is reused only while its checkpoint is the one recorded: a changed file is pruned again
    ckpt = tmp_path / "sweep" / "chains" / "structured+ft" / "s1" / "85pct.pt"
    ckpt.write_bytes(ckpt.read_bytes() + b"x")
    third = run_sweep(model, data, tmp_path / "sweep", settings)
    assert third.done == ["structured+ft/s1/85%"] and third.rows == res.rows  # the same seed gives the same model
    with pytest.raises(GraftError, match="other --levels"):
        run_sweep(model, data, tmp_path / "sweep", replace(settings, levels=("75%",)))


def test_script_is_thin_and_bad_conditions_are_one_line(tiny_val_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("prune_sweep", Path(__file__).parents[1] / "benchmarks" /
                                                  "prune_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model, data = tiny_val_inputs
    with pytest.raises(GraftError, match="--conditions 'pruned'"):
        mod.main(["--model", str(model), "--data", str(data), "--out", str(tmp_path / "s"), "--conditions", "pruned"])
    with pytest.raises(GraftError, match="'dense'"):
        mod.main(["--model", str(model), "--data", str(data), "--out", str(tmp_path / "s"), "--distill-teacher",
                  "dense"])


def test_sweeps_over_several_dense_models_give_dense_a_training_seed_std(tiny_val_inputs: tuple[Path, Path],
                                                                          tmp_path: Path, one_thread: None) -> None:
    model, data = tiny_val_inputs
    other = tmp_path / "dense1.pt"  # the same recipe "trained" with another seed
    from graft_edge.checkpoint import load_model

    first, ckpt = load_model(model)
    torch.manual_seed(1)
    save_checkpoint(other, build_model(first.cfg), ckpt.config)
    settings = SweepSettings(levels=("85%",), conditions=("structured", "structured+ft"), seeds=1, finetune_epochs=1)
    res = run_sweeps([model, other], data, tmp_path / "all", settings)
    assert (tmp_path / "all" / "m0" / "sweep.json").is_file() and (tmp_path / "all" / "m1" / "sweep.json").is_file()
    dense = [r for r in res.seed_rows if r["condition"] == "dense"]
    assert sorted(r["seed"] for r in dense) == [0, 1] and len(res.seed_rows) == 2 * 3
    by = {(r["condition"], r["level"]): r for r in res.rows}
    d = by[("dense", "100%")]
    maps = [r["mAP"] for r in dense]
    assert d["n_seeds"] == 2 and d["mAP"] == pytest.approx(sum(maps) / 2)
    assert d["mAP_std"] == pytest.approx(abs(maps[0] - maps[1]) / math.sqrt(2))
    assert by[("structured", "85%")]["n_seeds"] == 2 and by[("structured+ft", "85%")]["n_seeds"] == 2
    assert "sweep.md" in {p.name for p in (tmp_path / "all").iterdir()}
    with pytest.raises(GraftError, match="--model .*nope.pt does not exist"):
        run_sweeps([model, tmp_path / "nope.pt"], data, tmp_path / "bad", settings)
    assert not (tmp_path / "bad").exists()  # refused before the first model's sweep began


def test_one_dense_model_per_seed_pairs_the_differences() -> None:
    # dense models far apart (training seeds), each pruned model ~4 points below ITS dense: unpaired, the
    # training spread (std 8) hides the loss; paired, it is beyond the differences' own spread
    dense = [0.72, 0.81, 0.65]
    seed_rows = [_row("dense", "100%", s, m, 0.98) for s, m in enumerate(dense)]
    seed_rows += [_row("structured+ft", "45%", s, m - d, 0.97) for s, (m, d) in enumerate(zip(dense, (0.04, 0.05,
                                                                                                        0.03)))]
    seed_rows += [_row("structured+ft+kd", "45%", s, m - d, 0.97) for s, (m, d) in enumerate(zip(dense, (0.02,
                                                                                                           0.03, 0.01)))]
    rows = sweep_rows(seed_rows, ["45%"])
    ft = next(r for r in rows if r["condition"] == "structured+ft")
    assert ft["mAP_method"] == "paired t" and ft["mAP_diff"] == pytest.approx(-0.04)
    assert ft["mAP_vs_dense"] == "worse" and ft["mAP_std"] == pytest.approx(0.0702, abs=1e-3)
    fts = [r["mAP"] for r in seed_rows if r["condition"] == "structured+ft"]
    assert welch(fts, dense).verdict == "inconclusive"  # what an unpaired comparison says
    md = sweep_markdown(rows, seed_rows=seed_rows)
    assert "| worse -4.0 [-6.5, -1.5] |" in md and "the seed's own dense model" in md
    (line,) = recovery_lines(rows, seed_rows=seed_rows)
    assert "distillation changes test mAP by +2.0 (50% of it): better than finetuning alone: +2.0 points" in line
    models = [dict(r, model=f"m{r['seed']}", seed=0 if r["condition"] == "dense" else r["seed"]) for r in seed_rows]
    assert sweep_rows(models, ["45%"])[1]["mAP_diff"] == pytest.approx(-0.04)  # paired by model when rows name it
