"""Training: lr schedule numbers, center-loss updates, finetune, two-stage runs, DDP (gloo), SIGKILL + resume, CLI errors."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from graft_edge.checkpoint import load_model, read_checkpoint
from graft_edge.cli.main import app
from graft_edge.config import GraftConfig, LossConfig, config_to_dict
from graft_edge.errors import GraftError
from graft_edge.fileio import KILL_AT_WRITE_ENV, write_yaml
from graft_edge.model import build_model
from graft_edge.train import finetune, lr_factor, run_training
from graft_edge.train.distributed import DistEnv, Rendezvous, elastic_flags, gather_rows, slice_sizes, torchrun_args
from graft_edge.train.loop import make_stage, train_step
from tests.conftest import tiny_train_config

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


# ------------------------------------------------------------------ schedule

def test_lr_factor_numbers() -> None:
    f = lambda s: lr_factor(s, total_steps=100, warmup_steps=10, cooldown_frac=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(39) == pytest.approx(math.sqrt(10 / 40)) and f(89) == pytest.approx(math.sqrt(10 / 90))
    peak = math.sqrt(10 / 91)  # value at the cooldown start (step 90), then linear to 0
    assert f(90) == pytest.approx(peak) and f(95) == pytest.approx(peak * 5 / 10) and f(99) == pytest.approx(peak / 10)
    assert lr_factor(100, 100, warmup_steps=10) == 0.0
    assert all(lr_factor(s, 50, "constant") == 1.0 for s in range(50))
    assert lr_factor(3, 4, warmup_steps=10, cooldown_frac=0.5) == pytest.approx(0.3 / 2)  # warmup longer than the run
    with pytest.raises(ValueError):
        lr_factor(0, 10, "cosine")


def test_scheduler_sets_optimizer_lr() -> None:
    from graft_edge.config import StageConfig
    from graft_edge.train import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = build_scheduler(opt, StageConfig(warmup_steps=4, cooldown_frac=0.25), total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2 * math.sqrt(4 / 5), 2 * math.sqrt(4 / 6),
                                 2 * math.sqrt(4 / 7) * 2 / 2, 2 * math.sqrt(4 / 7) * 1 / 2])


# ------------------------------------------------------------------ one stage

def _batch(cfg: GraftConfig, n_ids: int = 4, k: int = 2) -> tuple[dict, torch.Tensor]:
    H, W = cfg.model.img_size
    images = {m: torch.randn(n_ids * k, 3, H, W) for m in cfg.model.modalities}
    return images, torch.arange(n_ids).repeat_interleave(k)


def test_center_loss_centers_are_updated_and_frozen_backbone_is_not() -> None:
    cfg = tiny_train_config()
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, num_ids=4))
    stage = replace(cfg.train.stage2, freeze_backbone=True, loss=LossConfig(beta=0.5, label_smoothing=0.1))
    run = make_stage(model, stage, total_steps=3, env=DistEnv())
    centers0 = run.criterion.center.centers.detach().clone()
    backbone0 = [p.detach().clone() for p in model.backbone.parameters()]
    head0 = model.head.classifier.weight.detach().clone()
    for _ in range(2):
        parts = train_step(run, *_batch(cfg))
    assert parts.center > 0
    assert not torch.allclose(run.criterion.center.centers, centers0)
    assert run.center_optimizer is not None and run.center_optimizer.param_groups[0]["lr"] == stage.center_lr
    assert all(torch.equal(a, b) for a, b in zip(backbone0, model.backbone.parameters()))
    assert not torch.equal(head0, model.head.classifier.weight)
    assert run.stage_step == 2 and run.scheduler.last_epoch == 2
    # stage 1 recipe (beta = 0): centers are neither optimised nor changed
    run1 = make_stage(model, cfg.train.stage1, total_steps=3, env=DistEnv())
    c1 = run1.criterion.center.centers.detach().clone()
    train_step(run1, *_batch(cfg))
    assert run1.center_optimizer is None and torch.equal(c1, run1.criterion.center.centers)


@pytest.mark.parametrize("beta", [0.5, 0.005])
def test_center_step_is_sgd_on_the_center_loss_whatever_beta(beta: float) -> None:
    cfg = tiny_train_config()
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, num_ids=4, enc_dropout=0.0))  # no dropout: the step's features are known
    stage = replace(cfg.train.stage2, loss=LossConfig(beta=beta))
    run = make_stage(model, stage, total_steps=3, env=DistEnv())
    images, labels = _batch(cfg, n_ids=2, k=3)  # ids 0 and 1 in the batch, ids 2 and 3 not
    with torch.no_grad():
        feats = model.train()(images).embedding
    c0 = run.criterion.center.centers.detach().clone()
    train_step(run, images, labels)
    # d/dc_k of mean_i ‖f_i − c_yi‖² (the official scaling) is −2·Σ_{yi=k}(f_i − c_k)/B; the 1/β rescale makes
    # the step independent of β (as in Luo et al.'s strong baseline, whose center loss has no ½ either)
    expected = c0.clone()
    for k in (0, 1):
        expected[k] += stage.center_lr * 2 * (feats[labels == k] - c0[k]).sum(0) / len(labels)
    centers = run.criterion.center.centers.detach()
    assert torch.allclose(centers, expected, atol=1e-6)
    assert torch.equal(centers[2:], c0[2:])  # centers of ids not in the batch do not move


def test_fixed_centers_are_the_official_random_ones_and_never_move() -> None:
    """loss.centers=fixed: N(0, 1) centers (row norm about sqrt(D), as the official code's) that no optimiser gets;
    the center term still pulls the embeddings towards them."""
    cfg = tiny_train_config()
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, num_ids=4, enc_dropout=0.0))
    stage = replace(cfg.train.stage2, loss=LossConfig(beta=0.5, centers="fixed"))
    run = make_stage(model, stage, total_steps=3, env=DistEnv())
    centers = run.criterion.center.centers
    c0 = centers.detach().clone()
    norms = c0.norm(dim=1) / math.sqrt(model.embed_dim)
    assert run.center_optimizer is None and not centers.requires_grad
    assert 0.7 < float(norms.min()) and float(norms.max()) < 1.3  # far from the learned mode's ~0.01 x sqrt(D)
    images, labels = _batch(cfg)
    with torch.no_grad():
        before = (model.train()(images).embedding - c0[labels]).pow(2).sum(1).mean()
    parts = train_step(run, images, labels)
    assert torch.equal(centers, c0) and float(parts.center) == pytest.approx(float(before), rel=1e-5)
    learned = make_stage(model, replace(stage, loss=LossConfig(beta=0.5)), total_steps=3, env=DistEnv())
    assert float(learned.criterion.center.centers.detach().norm(dim=1).max()) < 0.1 * math.sqrt(model.embed_dim)


def test_finetune_in_place_with_after_step_hook(tiny_data: Path) -> None:
    cfg = tiny_train_config()
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, num_ids=4))
    weight = model.fusion.encoders["rgb"].linear1.weight
    mask = torch.rand_like(weight) > 0.5  # a "pruned" layer the hook keeps at zero
    calls = []

    def keep_pruned(m) -> None:
        calls.append(1)
        with torch.no_grad():
            m.fusion.encoders["rgb"].linear1.weight.mul_(mask)

    before = model.head.classifier.weight.detach().clone()
    flags = [p.requires_grad for p in model.parameters()]
    out, metrics = finetune(model, cfg, tiny_data, epochs=1, after_step=keep_pruned)
    assert out is model and not model.training
    assert len(calls) == metrics["steps"] == 4
    assert torch.count_nonzero(weight[~mask]) == 0
    assert not torch.equal(before, model.head.classifier.weight)
    assert 0.0 <= metrics["mAP"] <= 1.0 and "R1" in metrics and metrics["num_query"] == 4
    assert [p.requires_grad for p in model.parameters()] == flags and not model.head.bn.bias.requires_grad
    with pytest.raises(Exception, match="training ids"):
        finetune(build_model(replace(cfg.model, num_ids=5)), cfg, tiny_data, epochs=1)


# ------------------------------------------------------------------ whole runs

def test_run_training_two_stages_stage2_starts_from_stage1_best(tiny_data: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from graft_edge.train import runner as train_runner

    scores = iter([0.9, 0.3, 0.5])  # stage 1: epoch 1 is best, epoch 2 worse; then stage 2
    real_eval = train_runner.evaluate_model

    def fake_eval(*args, **kwargs):
        return {**real_eval(*args, **kwargs), "mAP": next(scores)}

    monkeypatch.setattr(train_runner, "evaluate_model", fake_eval)
    real_save, stage1_end = train_runner.save_last, {}

    def spy_save(tr, run):
        if tr.pos.stage == 2 and run is None:  # the stage-1 -> stage-2 boundary: the final stage-1 weights
            stage1_end.update({k: v.detach().to("cpu", copy=True) for k, v in tr.model.state_dict().items()})
        real_save(tr, run)

    monkeypatch.setattr(train_runner, "save_last", spy_save)
    cfg = tiny_train_config()
    cfg = replace(cfg, train=replace(cfg.train, stage2=replace(cfg.train.stage2, lr=0.0)))  # stage 2 keeps its start
    result = run_training(cfg, tiny_data, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert result.steps == 2 * 4 + 4 and result.num_ids == 4
    assert result.stage_best == {1: 0.9, 2: 0.5} and result.metrics["stage"] == 2
    s1, s2, last = (read_checkpoint(run / n) for n in ("stage1_best.pt", "stage2_best.pt", "last.pt"))
    assert s1.meta["epoch"] == 1 and s1.meta["step"] == 4
    params = [k for k, _ in build_model(s1.config.model).named_parameters()]
    assert all(torch.equal(s1.state_dict[k], s2.state_dict[k]) for k in params)  # stage 2 started from the best
    assert not all(torch.equal(s1.state_dict[k], stage1_end[k]) for k in params)  # ... not from stage 1's end
    assert last.extra["stage"] == 3 and last.extra["finished"] and last.extra["step"] == 12
    model, ck = load_model(run / "best.pt")
    assert ck.config.model.num_ids == 4 and ck.meta["mAP"] == 0.5
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"stage": 2' in lines[-1] and '"samples_per_s"' in lines[0]
    assert (run / "config.yaml").is_file() and any((run / "tb").iterdir())
    torch.load(run / "last.pt", weights_only=True)


def test_best_checkpoints_are_chosen_on_validation_not_test(tiny_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from graft_edge.train import runner as train_runner

    scores = {"val": iter([0.2, 0.8, 0.5]), "test": iter([0.9, 0.1, 0.3])}  # test alone would pick stage 1 epoch 1
    real_eval = train_runner.evaluate_model

    def fake_eval(model, query, gallery):
        split = "val" if len(query.dataset) == 2 else "test"  # 1 held-out id x 2 cameras vs 4 test queries
        return {**real_eval(model, query, gallery), "mAP": next(scores[split])}

    monkeypatch.setattr(train_runner, "evaluate_model", fake_eval)
    cfg = tiny_train_config()
    cfg = replace(cfg, data=replace(cfg.data, val_fraction=0.25))
    result = run_training(cfg, tiny_data, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert result.num_ids == 3 and result.stage_best == {1: 0.8, 2: 0.5}  # 4 train ids, 1 held out
    s1 = read_checkpoint(run / "stage1_best.pt").meta
    assert s1["epoch"] == 2 and s1["val_mAP"] == 0.8 and s1["mAP"] == 0.1 and s1["selected_on"] == "val_mAP"
    assert result.metrics["val_mAP"] == 0.5 and result.metrics["mAP"] == 0.3 and result.metrics["stage"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["val_mAP"], r["mAP"]) for r in rows] == [(0.2, 0.9), (0.8, 0.1), (0.5, 0.3)]
    assert rows[0]["val_R1"] is not None and rows[0]["R1"] is not None
    summary = json.loads((run / "result.json").read_text())
    assert summary["selected_on"] == "val_mAP" and summary["metrics"]["val_mAP"] == 0.5
    assert summary["metrics"]["mAP"] == 0.3 and summary["num_ids"] == 3


def test_modality_subset_trains_on_three_modality_data(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config()
    cfg = replace(cfg, model=replace(cfg.model, modalities=("nir",)))
    result = run_training(cfg, tiny_data, tmp_path / "nir", max_steps=2, progress=False)
    model, _ = load_model(result.best)
    assert model.modalities == ("nir",) and result.steps == 4


WORKER = """
import sys, torch
from graft_edge.config import config_from_dict
from graft_edge.fileio import read_yaml
from graft_edge.train import runner
real = runner._finish
def spy(tr):
    torch.save({k: v.clone() for k, v in tr.model.state_dict().items()}, f"{sys.argv[3]}/rank{tr.env.rank}.pt")
    return real(tr)
runner._finish = spy
runner.run_training(config_from_dict(read_yaml(sys.argv[1])), sys.argv[2], sys.argv[3], max_steps=2, progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["token", "map"])
def test_ddp_two_ranks_gloo_end_with_identical_weights(tiny_data: Path, tmp_path: Path, pool: str) -> None:
    """pool=map: the backbone has an attention pool (`attn_pool`) that forward_features never runs, and the
    backbone is trained: DDP needs find_unused_parameters there (it raises at the second step without)."""
    cfg = tiny_train_config()
    cfg = replace(cfg, model=replace(cfg.model, backbone_args={**cfg.model.backbone_args, "global_pool": pool}))
    write_yaml(tmp_path / "cfg.yaml", config_to_dict(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU, GPUs or not
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "worker.py"), str(tmp_path / "cfg.yaml"), str(tiny_data), str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    last = read_checkpoint(out / "last.pt")
    # 4 global batches per epoch over 2 ranks -> 2 steps per rank per epoch, capped at 2 per stage
    assert last.extra["world_size"] == 2 and last.extra["step"] == 4 and len(last.extra["rng"]) == 2
    assert not torch.equal(r0["head.classifier.weight"], torch.zeros_like(r0["head.classifier.weight"]))


def _train_argv(data: Path, out: Path, cfg_path: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg_path), "--data", str(data), "--out", str(out), "--threads", "1", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_data: Path, tmp_path: Path, workers: int) -> None:
    """With 2 persistent loader workers too: augmentation is seeded per item (data/seeding.py), not per worker."""
    cfg = tiny_train_config()
    cfg = replace(cfg, train=replace(cfg.train, stage1=replace(cfg.train.stage1, epochs=3), checkpoint_every=1),
                  data=replace(cfg.data, num_workers=workers, erase=1.0))  # every item's augmentation is random
    cfg_path = tmp_path / "cfg.yaml"
    write_yaml(cfg_path, config_to_dict(cfg))
    full = run_training(cfg, tiny_data, tmp_path / "full", progress=False, checkpoint_steps=1)
    killed = tmp_path / "killed"
    argv = [sys.executable, "-m", "graft_edge", *_train_argv(tiny_data, killed, cfg_path, "--checkpoint-steps", "1")]
    # the fault hook SIGKILLs the run while it writes step 6's last.pt (4 steps per epoch): a fixed point, any load
    env = {**os.environ, KILL_AT_WRITE_ENV: "last.pt:6"}
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    at_kill = read_checkpoint(killed / "last.pt").extra
    assert not at_kill["finished"] and (at_kill["stage"], at_kill["step"]) == (1, 5)
    assert at_kill["batch"] == 1  # killed mid-epoch: the resumed loader's workers get other batches than before
    res = runner.invoke(app, _train_argv(tiny_data, killed, cfg_path, "--resume", "--checkpoint-steps", "1"))
    assert res.exit_code == 0, res.output
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(killed / "last.pt")
    assert b.extra["step"] == a.extra["step"] == full.steps == 3 * 4 + 4
    assert b.extra["stage"] == 3 and b.extra["finished"]
    assert set(b.extra) == set(a.extra) >= {"stage", "epoch", "batch", "step", "sampler", "rng", "best", "world_size"}
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 4
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / "full", killed)]
    # the interrupted epoch's logged loss covers all of its steps, not only those after the resume
    assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[0]], abs=1e-5)
    for key, value in a.state_dict.items():  # same RNG streams and batches: the same weights
        assert torch.allclose(value.float(), b.state_dict[key].float(), atol=1e-5), key


# ------------------------------------------------------------------ CLI errors

@pytest.mark.parametrize("extra, needle", [
    (["--preset", "synthetic", "--set", "train.stage1.nope=1"], "unknown config key"),
    (["--preset", "synthetic", "--set", "train.stage1.epochs=abc"], "expected an integer"),
    (["--preset", "synthetic", "--config", "x.yaml"], "not both"),
    ([], "--preset NAME"),
    (["--preset", "synthetic", "--resume"], "last.pt does not exist"),
    (["--preset", "synthetic", "--resume", "--overwrite"], "exclude each other"),
    (["--preset", "synthetic", "--set", "data.ids_per_batch=40"], "ids_per_batch=40"),
    (["--preset", "synthetic", "--nproc", "2", "--set", "data.ids_per_batch=40"], "ids_per_batch=40"),
    (["--preset", "synthetic", "--nnodes", "2", "--node-rank", "2"], "--node-rank 2"),
    (["--preset", "synthetic", "--nnodes", "2", "--max-restarts", "1"], "needs a rendezvous"),
    (["--preset", "synthetic", "--nnodes", "2", "--rdzv-endpoint", "h:1", "--rdzv-backend", "zmq"], "'zmq'"),
    (["--preset", "synthetic", "--set", "train.stage2.loss.centers=moving"], "loss.centers='moving'"),
])
def test_cli_errors_are_one_line_exit_2(tiny_data: Path, tmp_path: Path, extra: list[str], needle: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU (gloo) case, on GPU machines too
    res = runner.invoke(app, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), *extra])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_cli_refuses_nonempty_run_dir_and_empty_data(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["train", "--preset", "synthetic", "--data", str(tiny_data), "--out", str(run)])
    assert res.exit_code == 2 and "is not empty" in res.output and "--overwrite" in res.output
    empty = tmp_path / "empty"
    (empty / "rgbir" / "bounding_box_train").mkdir(parents=True)
    res = runner.invoke(app, ["train", "--preset", "synthetic", "--data", str(empty), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and str(empty) in res.output, res.output


def test_cli_resume_with_changed_config_names_the_key(tiny_data: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    write_yaml(cfg_path, config_to_dict(tiny_train_config()))
    out = tmp_path / "run"
    res = runner.invoke(app, _train_argv(tiny_data, out, cfg_path, "--max-steps", "1"))
    assert res.exit_code == 0, res.output
    assert "best.pt" in res.output and (out / "best.pt").is_file()
    res = runner.invoke(app, _train_argv(tiny_data, out, cfg_path, "--resume", "--set", "train.stage2.lr=0.5"))
    assert res.exit_code == 2 and "train.stage2.lr" in res.output
    res = runner.invoke(app, _train_argv(tiny_data, out, cfg_path, "--resume", "--max-steps", "3"))
    assert res.exit_code == 2 and "--max-steps 3" in res.output
    res = runner.invoke(app, _train_argv(tiny_data, out, cfg_path, "--overwrite", "--max-steps", "1"))
    assert res.exit_code == 0, res.output


def test_cli_help_documents_options() -> None:
    res = runner.invoke(app, ["train", "--help"])
    assert res.exit_code == 0
    for opt in ("--preset", "--config", "--set", "--nproc", "--nnodes", "--node-rank", "--master-addr",
                "--master-port", "--resume", "--overwrite", "--max-steps", "--checkpoint-steps", "--max-restarts",
                "--rdzv-endpoint", "--rdzv-backend", "--rdzv-id"):
        assert opt in res.output


def test_torchrun_command_lines(tmp_path: Path) -> None:
    from graft_edge.cli.train import _worker_args
    from graft_edge.train.distributed import torchrun_args

    assert torchrun_args(2) == ["--nproc_per_node=2", "--standalone"]
    assert torchrun_args(4, 2, 1, "10.0.0.1", 1234) == [
        "--nproc_per_node=4", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=1234"]
    args = _worker_args("synthetic", None, tmp_path, tmp_path / "r", ["a.b=1"], True, False, 5, 0, 1)
    assert args[0] == "train" and "--nproc" not in args and ["--set", "a.b=1"] == args[args.index("--set"):][:2]
    assert "--resume" in args and args[args.index("--max-steps") + 1] == "5"


def test_gather_in_one_process_is_the_identity() -> None:
    env = DistEnv()
    x = torch.randn(5, 3, requires_grad=True)
    assert slice_sizes(env, 5) == (5,)
    assert gather_rows(env, x, (5,)) is x


def test_launch_options() -> None:
    assert torchrun_args(2, max_restarts=1) == ["--nproc_per_node=2", "--standalone", "--max-restarts=1"]
    assert torchrun_args(4, 2, rdzv=Rendezvous("node0:29400")) == [
        "--nproc_per_node=4", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400",
        "--rdzv-id=graft-edge"]
    with pytest.raises(GraftError, match="--rdzv-backend 'zmq'"):
        torchrun_args(2, rdzv=Rendezvous("h:1", backend="zmq"))
    with pytest.raises(GraftError, match="--max-restarts -1"):
        torchrun_args(2, max_restarts=-1)


def test_batchnorm_outside_the_bnneck_cannot_be_synchronised_on_cpu_processes() -> None:
    from graft_edge.train.distributed import sync_batchnorm

    cfg = tiny_train_config()
    model = build_model(cfg.model)
    sync_batchnorm(model, DistEnv(world_size=2))  # only the BNNeck: it sees the gathered batch
    model.fusion.extra = torch.nn.BatchNorm1d(4)
    sync_batchnorm(model, DistEnv())  # one process: nothing to synchronise
    with pytest.raises(GraftError, match=r"BatchNorm layers outside the BNNeck \(fusion.extra"):
        sync_batchnorm(model, DistEnv(world_size=2))


@pytest.mark.parametrize("restarts, has_last, flags, expected", [
    ("0", True, (False, True), (False, True)),  # first attempt: the command's own flags
    ("1", True, (False, True), (True, False)),  # restarted: continue from last.pt
    ("2", False, (False, False), (False, True)),  # restarted before any last.pt: start over
])
def test_a_restarted_worker_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restarts: str, has_last: bool,
                                    flags: tuple[bool, bool], expected: tuple[bool, bool]) -> None:
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", restarts)
    last = tmp_path / "last.pt"
    if has_last:
        last.write_bytes(b"x")
    assert elastic_flags(last, *flags) == expected


def test_more_ranks_than_gpus_is_one_clear_line(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    res = runner.invoke(app, ["train", "--preset", "synthetic", "--data", str(tiny_data), "--out", str(tmp_path / "r"),
                              "--nproc", "2"])
    assert res.exit_code == 2 and "needs 2 GPUs on this node but 1 are visible" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()
