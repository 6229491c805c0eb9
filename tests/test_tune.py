"""`graft-edge tune`: search space checks, trials as run directories, shared SQLite study, killed trials, bad input."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft_edge.cli.main import app
from graft_edge.config import config_to_dict, get_preset
from graft_edge.errors import GraftError
from graft_edge.fileio import KILL_AT_WRITE_ENV, read_yaml, write_yaml
from graft_edge.workflows.tune_space import ParamRange, TuneConfig, apply_params, check_space, parse_param

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
LR = "train.stage1.lr=1e-3:3e-2:log"  # the tiny from-scratch ViT's useful range


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 ids (8 train: 6 trained on, 2 held out for validation), 2 cameras x 2 images, 16x32 slots."""
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("tune") / "syn"
    write_synthetic(root, ids=16, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trial of a few seconds: 1-block ViT, 2 + 1 epochs of 6 batches, evaluation every epoch."""
    cfg = get_preset("synthetic")
    model = replace(cfg.model, backbone_args={**cfg.model.backbone_args, "depth": 1, "embed_dim": 32, "num_heads": 2},
                    img_size=(16, 32), enc_heads=2, enc_ff=32)
    data = replace(cfg.data, ids_per_batch=2, instances_per_id=2, eval_batch_size=32, val_fraction=0.25)
    train = replace(cfg.train, stage1=replace(cfg.train.stage1, epochs=2, warmup_steps=2),
                    stage2=replace(cfg.train.stage2, epochs=1), eval_every=1)
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    write_yaml(path, config_to_dict(replace(cfg, model=model, data=data, train=train)))
    return path


def _tune_argv(data: Path, cfg_file: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return ["tune", "--config", str(cfg_file), "--data", str(data), "--out", str(out), "--trials", str(trials),
            "--param", LR, "--threads", "1", *extra]


# ------------------------------------------------------------------ search space

def test_parse_and_apply_params() -> None:
    assert parse_param("train.stage1.lr=1e-5:1e-3:log") == ParamRange("train.stage1.lr", 1e-5, 1e-3, log=True)
    cfg = get_preset("synthetic")
    space = check_space(cfg, TuneConfig(space=(ParamRange("train.stage2.betas.1", 0.95, 0.99),
                                               ParamRange("train.stage1.warmup_steps", 10, 100))))
    assert [p.integer for p in space] == [False, True]  # an integer key samples integers
    out = apply_params(cfg, {"train.stage2.betas.1": 0.97, "train.stage1.warmup_steps": 20, "train.stage1.lr": 1e-4})
    assert out.train.stage2.betas == (cfg.train.stage2.betas[0], 0.97) and out.train.stage1.warmup_steps == 20
    assert out.train.stage1.lr == 1e-4 and out.model == cfg.model


def test_default_space_is_the_authors_ranges() -> None:
    space = {p.name: p for p in TuneConfig().space}
    assert space["train.stage1.lr"] == ParamRange("train.stage1.lr", 1e-6, 1e-4, log=True)
    assert space["train.stage2.weight_decay"] == ParamRange("train.stage2.weight_decay", 5e-4, 5e-3, log=True)
    assert (space["train.stage1.betas.0"].low, space["train.stage1.betas.0"].high) == (0.70, 0.95)
    assert (space["train.stage2.betas.1"].low, space["train.stage2.betas.1"].high) == (0.95, 0.99)
    assert len(check_space(get_preset("rgbnt100"), TuneConfig())) == 8


@pytest.mark.parametrize("space, needle", [
    ((ParamRange("train.stage1.nope", 0, 1),), "unknown hyperparameter 'train.stage1.nope'"),
    ((ParamRange("train.stage1.lr", 1e-3, 1e-3),), "empty range"),
    ((ParamRange("train.stage1.lr", 0.0, 1e-3, log=True),), "LOW > 0"),
    ((ParamRange("model.backbone", 0, 1),), "not numeric"),
])
def test_bad_space_is_one_clear_error(space: tuple, needle: str) -> None:
    with pytest.raises(GraftError, match=needle):
        check_space(get_preset("synthetic"), TuneConfig(space=space))


@pytest.mark.parametrize("extra, trials, needle", [
    (["--param", "train.stage1.bogus=1:2"], 1, "unknown hyperparameter 'train.stage1.bogus'"),
    (["--param", "train.stage1.lr=0.1:0.01"], 1, "empty range"),
    (["--param", "train.stage1.lr=abc"], 1, "expected NAME=LOW:HIGH"),
    ([], 0, "--trials 0"),
    (["--storage", "sqlite:////nonexistent-dir/x/study.db"], 1, "cannot open the study database"),
    (["--storage", "nosuchdb://host/db"], 1, "cannot open the study database"),
    (["--pruner", "magic"], 1, "pruner 'magic'"),
    (["--set", "data.val_fraction=0"], 1, "needs a validation split"),
    (["--param", "train.stage1.warmup_steps=0.5:3:log"], 1, "must be whole numbers, got 0.5:3"),
    (["--param", "train.stage1.warmup_steps=1.2:1.8"], 1, "must be whole numbers, got 1.2:1.8"),
    (["--param", "train.stage1.lr=1e-5:inf:log"], 1, "must be finite"),
    (["--param", "train.stage1.betas.0=1.5:2.5"], 1, "LOW 1.5 gives an invalid config (train.stage1.betas="),
    (["--param", "data.val_fraction=0.1:1.5"], 1, "HIGH 1.5 gives an invalid config (data.val_fraction="),
])
def test_cli_bad_input_is_one_line(data: Path, cfg_file: Path, tmp_path: Path, extra: list[str], trials: int,
                                   needle: str) -> None:
    res = runner.invoke(app, _tune_argv(data, cfg_file, tmp_path / "t", trials, *extra))
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split()) and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "t" / "trials").exists()  # refused before any trial


# ------------------------------------------------------------------ whole studies

def test_tune_writes_trials_results_and_a_best_config_that_retrains_to_its_score(data: Path, cfg_file: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "study"
    res = runner.invoke(app, _tune_argv(data, cfg_file, out, 2, "--pruner", "none", "--seed", "0"))
    assert res.exit_code == 0, res.output
    best = json.loads((out / "best.json").read_text())
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("number,state,val_mAP,test_mAP")
    for n in (0, 1):
        run = out / "trials" / f"trial_{n:04d}"
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 3 and all(r["val_mAP"] is not None and r["mAP"] is not None for r in lines)
        assert (run / "best.pt").is_file()
    assert (out / "optimization_history.png").stat().st_size > 1000 and "| trial |" in (out / "results.md").read_text()
    tuned = read_yaml(out / "best_config.yaml")
    assert tuned["train"]["stage1"]["lr"] == pytest.approx(best["params"]["train.stage1.lr"])
    again = runner.invoke(app, ["train", "--config", str(out / "best_config.yaml"), "--data", str(data),
                                "--out", str(tmp_path / "retrain"), "--threads", "1"])
    assert again.exit_code == 0, again.output
    summary = json.loads((tmp_path / "retrain" / "result.json").read_text())
    assert summary["metrics"]["val_mAP"] == pytest.approx(best["val_mAP"], abs=1e-6)  # CPU training is deterministic


def _study(out: Path):
    import optuna

    return optuna.load_study(study_name="graft-edge", storage=f"sqlite:///{out / 'study.db'}")


def _worker(data: Path, cfg_file: Path, out: Path, trials: int, seed: int, kill_at: str = "") -> subprocess.Popen:
    """A `tune` worker process; `kill_at` ("NAME:N") makes it SIGKILL itself at that atomic write (fileio's hook)."""
    argv = [sys.executable, "-m", "graft_edge", *_tune_argv(data, cfg_file, out, trials, "--heartbeat", "1",
                                                            "--seed", str(seed))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", KILL_AT_WRITE_ENV: kill_at}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(data: Path, cfg_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    out.mkdir()
    procs = [_worker(data, cfg_file, out, 4, seed) for seed in (1, 2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    trials = _study(out).get_trials()
    numbers = [t.number for t in trials]
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len(trials) == 4 and sorted(numbers) == [0, 1, 2, 3]  # exactly N, no duplicates
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
    # every trial was run by exactly one worker (how the 4 split between them depends on the machine's speed)
    started = [set(re.findall(r"^trial (\d+):", o[1], re.M)) for o in outputs]
    assert not started[0] & started[1] and started[0] | started[1] == {"0", "1", "2", "3"}


@pytest.mark.slow
def test_killed_trial_is_marked_failed_and_the_study_continues(data: Path, cfg_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = _worker(data, cfg_file, out, 2, 0, kill_at="last.pt:1")  # mid-trial: as stage 1 epoch 1 of 3 is saved
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "trials" / "trial_0000" / "last.pt").exists()
    assert [t.state.name for t in _study(out).get_trials()] == ["RUNNING"]  # a dead trial, still "running"
    time.sleep(2.5)  # real time must pass: the dead trial's last heartbeat becomes older than the 2 s grace period
    again = _worker(data, cfg_file, out, 2, 0)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-2000:]
    states = {t.number: t.state.name for t in _study(out).get_trials()}
    assert states[0] == "FAIL" and sorted(states) == [0, 1, 2]
    assert [states[1], states[2]].count("COMPLETE") + [states[1], states[2]].count("PRUNED") == 2
    assert "2 complete" in stdout or "pruned" in stdout


@pytest.mark.slow
def test_nproc_trials_run_under_torchrun_and_report_validation(data: Path, cfg_file: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from graft_edge.checkpoint import read_checkpoint

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on the CPU, GPUs or not
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "ddp"
    res = runner.invoke(app, _tune_argv(data, cfg_file, out, 1, "--nproc", "2", "--pruner", "none"))
    assert res.exit_code == 0, res.output
    run = out / "trials" / "trial_0000"
    assert read_checkpoint(run / "last.pt").extra["world_size"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    trial = _study(out).get_trials()[0]
    assert trial.state.name == "COMPLETE" and len(trial.intermediate_values) == len(rows) == 3
    assert list(trial.intermediate_values.values()) == [r["val_mAP"] for r in rows]


# ------------------------------------------------------------------ failed trials, and a study's identity

def _enqueue(out: Path, *params: dict) -> None:
    """A study in OUT/study.db whose first trials draw `params` (Optuna's enqueue_trial)."""
    import optuna

    out.mkdir(parents=True)
    study = optuna.create_study(study_name="graft-edge", storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    for p in params:
        study.enqueue_trial(p)


def test_a_failing_trial_is_recorded_as_failed_and_the_study_goes_on(data: Path, cfg_file: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "study"
    # a diverging lr; then 3 heads of a 32-wide encoder (every key in range, the config invalid); then a good draw
    _enqueue(out, {"train.stage1.lr": 1e30, "model.enc_heads": 2}, {"train.stage1.lr": 1e-2, "model.enc_heads": 3},
             {"train.stage1.lr": 1e-2, "model.enc_heads": 2})
    res = runner.invoke(app, _tune_argv(data, cfg_file, out, 1, "--param", "train.stage1.lr=1e-3:1e30:log",
                                        "--param", "model.enc_heads=1:4", "--pruner", "none", "--max-steps", "3"))
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    lines = [" ".join(x.split()) for x in res.output.splitlines()]
    assert any("trial 0 failed: training diverged" in x for x in lines), res.output
    assert any("trial 1 failed: model.enc_heads=3" in x for x in lines), res.output
    assert [t.state.name for t in _study(out).get_trials()] == ["FAIL", "FAIL", "COMPLETE"]
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[1].startswith("0,FAIL") and "training diverged" in rows[1] and rows[3].startswith("2,COMPLETE")
    assert read_yaml(out / "best_config.yaml")["model"]["enc_heads"] == 2


def test_a_study_whose_trials_all_fail_stops_in_one_line(data: Path, cfg_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    res = runner.invoke(app, _tune_argv(data, cfg_file, out, 1, "--param", "train.stage1.lr=1e20:1e30:log",
                                        "--max-steps", "3", "--seed", "0"))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    last = " ".join(res.output.strip().splitlines()[-1].split())
    assert "3 trials in a row failed (the last: training diverged" in last and last.startswith("error:"), res.output
    assert [t.state.name for t in _study(out).get_trials()] == ["FAIL"] * 3


@pytest.fixture(scope="module")
def started_study(data: Path, cfg_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder with one finished trial of the tiny config (--max-steps 2)."""
    out = tmp_path_factory.mktemp("started") / "study"
    res = runner.invoke(app, _tune_argv(data, cfg_file, out, 1, "--pruner", "none", "--max-steps", "2"))
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("extra, needle", [
    (["--set", "data.val_fraction=0.5"], "data.val_fraction: 0.25 then, 0.5 now"),
    (["--set", "model.enc_ff=16"], "config.model.enc_ff: 32 then, 16 now"),
    (["--max-steps", "3"], "max_steps: 2 then, 3 now"),
    (["--data", "OTHER"], "--data holds other image files"),
])
def test_a_study_refuses_to_continue_with_another_base(started_study: Path, data: Path, cfg_file: Path,
                                                       tmp_path: Path, extra: list[str], needle: str) -> None:
    from graft_edge.data.synthetic import write_synthetic

    if extra[0] == "--data":
        write_synthetic(tmp_path / "other", ids=16, cameras=2, images_per_camera=2, size=(16, 32), seed=1)
        data = tmp_path / "other"
        extra = []
    argv = _tune_argv(data, cfg_file, started_study, 2, "--pruner", "none", *extra)
    if "--max-steps" not in extra:
        argv += ["--max-steps", "2"]
    res = runner.invoke(app, argv)
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "was started with another setup" in line and needle in line, res.output
    assert len(_study(started_study).get_trials()) == 1  # nothing ran


def test_a_study_continues_with_the_same_base_and_a_searched_key_set_otherwise(started_study: Path, data: Path,
                                                                                cfg_file: Path,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "study"
    shutil.copytree(started_study, out)
    res = runner.invoke(app, _tune_argv(data, cfg_file, out, 2, "--pruner", "none", "--max-steps", "2",
                                        "--set", "train.stage1.lr=0.5"))  # the searched key: its base value is unused
    assert res.exit_code == 0, res.output
    assert [t.state.name for t in _study(out).get_trials()] == ["COMPLETE", "COMPLETE"]
