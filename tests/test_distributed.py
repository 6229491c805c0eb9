"""DDP computes the one-process recipe: N gloo processes take the same optimizer step as one, through the library
and through `graft-edge train --nproc`; a process killed under --max-restarts is restarted and the run ends with the
uninterrupted run's weights."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.checkpoint import read_checkpoint
from graft_edge.config import GraftConfig, config_to_dict
from graft_edge.data import build_train_loader
from graft_edge.fileio import write_yaml
from tests.conftest import tiny_train_config

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")

# One optimizer step per (stage, mining) case from the same weights on the same global batch; rank 0 saves the
# weights (and the center-loss centers) after the step. Run plainly (1 process) or under torchrun (N). In float64:
# parameters whose true gradient is exactly zero (a LayerNorm bias that shifts every embedding alike, which the
# BNNeck and the triplet distances ignore) get an Adam first step of lr x noise / (|noise| + eps), so float32
# rounding noise would move them by up to lr, at any process count; float64 keeps that noise far below eps.
STEP_WORKER = """
import sys
from dataclasses import replace
import torch
from graft_edge.config import config_from_dict
from graft_edge.data import build_train_loader
from graft_edge.fileio import read_yaml
from graft_edge.model import build_model
from graft_edge.train.distributed import init_distributed
from graft_edge.train.loop import make_stage, set_train_mode, train_step

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
cfg, data, out = config_from_dict(read_yaml(sys.argv[1])), sys.argv[2], sys.argv[3]
env = init_distributed()
results = {}
for name in ("stage1", "stage2"):
    for mining in ("random", "hard"):
        base = getattr(cfg.train, name)
        stage = replace(base, loss=replace(base.loss, mining=mining))
        torch.manual_seed(0)
        model = build_model(cfg.model)
        loader, sampler, _ = build_train_loader(data, cfg, env.rank, env.world_size)
        sampler.set_epoch(0)
        images, labels, _ = next(iter(loader))
        images = {m: x.double() for m, x in images.items()}
        results.setdefault("start", {k: v.detach().clone() for k, v in model.state_dict().items()})
        run = make_stage(model, stage, 10, env)
        set_train_mode(model, stage)
        train_step(run, images, labels)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["centers"] = run.criterion.center.centers.detach().clone()
        results[f"{name}-{mining}"] = state
if env.rank == 0:
    torch.save(results, out)
"""


def _env(extra_path: Path | None = None) -> dict[str, str]:
    path = f"{extra_path}{os.pathsep}{REPO}" if extra_path else str(REPO)
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 training ids x 6 images (2 cameras x 3), 16x32 slots."""
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data") / "syn"
    write_synthetic(root, ids=12, cameras=2, images_per_camera=3, size=(16, 32), seed=0)
    return root


def equivalence_config() -> GraftConfig:
    """The tiny recipe in the sliced mode (P x K is the global batch) with a global batch of 25 images: slices of
    12 + 13 on 2 processes and 8 + 8 + 9 on 3; every item augmented (flips, erasing); dropout off."""
    cfg = tiny_train_config()
    return replace(cfg, model=replace(cfg.model, enc_dropout=0.0),
                   data=replace(cfg.data, ids_per_batch=5, instances_per_id=5, anchor_repeats=1, erase=1.0,
                                hflip=0.5, vflip=0.5))


def _step(tmp_path: Path, cfg_path: Path, data: Path, nproc: int) -> dict[str, dict[str, torch.Tensor]]:
    worker, out = tmp_path / "step_worker.py", tmp_path / f"step{nproc}.pt"
    worker.write_text(STEP_WORKER)
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *launch, str(worker), str(cfg_path), str(data), str(out)],
                          capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item(), k) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_and_three_processes_take_the_one_process_step(tmp_path: Path, data: Path) -> None:
    """Stage 1 and 2, random and hard mining, augmentation on, unequal slices: parameters (and BNNeck running
    statistics, centers) after one step equal the single process's within 1e-5."""
    cfg = equivalence_config()
    cfg_path = tmp_path / "cfg.yaml"
    write_yaml(cfg_path, config_to_dict(cfg))
    sizes = {w: [len(build_train_loader(data, cfg, r, w)[1].epoch_batches()[0]) for r in range(w)] for w in (2, 3)}
    assert sizes == {2: [12, 13], 3: [8, 8, 9]}  # a slice-size remainder at both process counts
    one = _step(tmp_path, cfg_path, data, 1)
    start = one.pop("start")
    for case, state in one.items():  # the step moved every case's weights well beyond the tolerance
        assert _max_diff({k: state[k] for k in start}, start)[0] > 100 * TOL, case
    for nproc in (2, 3):
        many = _step(tmp_path, cfg_path, data, nproc)
        for case in one:
            diff, key = _max_diff(many[case], one[case])
            assert diff <= TOL, f"{nproc} processes, {case}: {key} differs by {diff:.3g}"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).state_dict


# ------------------------------------------------------------------ through the CLI

def _train(data: Path, cfg_path: Path, out: Path, *extra: str, path: Path | None = None) -> None:
    argv = [sys.executable, "-m", "graft_edge", "train", "--config", str(cfg_path), "--data", str(data),
            "--out", str(out), "--threads", "1", *extra]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=_env(path), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_cli_nproc_2_writes_the_nproc_1_weights(tmp_path: Path, data: Path) -> None:
    """`train --max-steps 1`: one step per stage (stage 2 from stage 1's best), evaluations in between.

    In float32: Adam's first step moves a parameter whose true gradient is exactly zero (the attention key biases;
    without the center loss also the fusion encoders' last LayerNorm bias, see STEP_WORKER) by lr x rounding noise /
    (|noise| + eps), at any process count. So stage 1 has the center loss on and both stages an lr of 5e-4, which
    keeps those moves near 1e-7 while any real difference (a sign flip) moves a weight by 2 x lr = 1e-3."""
    cfg = equivalence_config()
    s1, s2 = cfg.train.stage1, cfg.train.stage2
    cfg = replace(cfg, train=replace(cfg.train, stage1=replace(s1, lr=5e-4, loss=replace(s1.loss, beta=0.0005)),
                                     stage2=replace(s2, lr=5e-4)))
    cfg_path = tmp_path / "cfg.yaml"
    write_yaml(cfg_path, config_to_dict(cfg))
    _train(data, cfg_path, tmp_path / "one", "--max-steps", "1")
    _train(data, cfg_path, tmp_path / "two", "--max-steps", "1", "--nproc", "2")
    for name in ("best.pt", "last.pt"):
        a, b = _weights(tmp_path / "one" / name), _weights(tmp_path / "two" / name)
        diff, key = _max_diff(a, b)
        assert diff <= TOL, f"{name}: {key} differs by {diff:.3g}"
    assert read_checkpoint(tmp_path / "two" / "last.pt").extra["world_size"] == 2


# Loaded by every Python process the test starts (sitecustomize on PYTHONPATH): on the first attempt only, rank 1
# SIGKILLs itself right after step KILL_AT (a fixed point of the run, mid-epoch), once that step's last.pt is due.
KILL_HOOK = """
import importlib.abc, importlib.util, os, signal, sys

KILL_AT = {kill_at}
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "graft_edge.train.runner":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                on_step = module._on_step

                def killing_on_step(tr, run, info):
                    on_step(tr, run, info)
                    if tr.pos.step == KILL_AT:
                        open(os.environ["KILL_MARK"], "w").write(str(tr.pos.step))
                        os.kill(os.getpid(), signal.SIGKILL)

                module._on_step = killing_on_step
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Hook())
"""


@pytest.mark.slow
def test_sigkill_one_of_two_processes_restarts_and_ends_like_the_uninterrupted_run(tmp_path: Path, data: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = equivalence_config()
    cfg = replace(cfg, model=replace(cfg.model, enc_dropout=0.1),  # dropout on: resume restores every rank's RNG
                  train=replace(cfg.train, stage1=replace(cfg.train.stage1, epochs=3), eval_every=3))
    cfg_path = tmp_path / "cfg.yaml"
    write_yaml(cfg_path, config_to_dict(cfg))
    steps_per_epoch = len(build_train_loader(data, cfg)[1].epoch_batches())
    kill_at = steps_per_epoch + 1  # stage 1, epoch 2, after its first step
    assert 0 < kill_at % steps_per_epoch
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILL_HOOK.format(kill_at=kill_at))
    mark = tmp_path / "kill-mark.txt"
    monkeypatch.setenv("KILL_MARK", str(mark))
    common = ("--nproc", "2", "--checkpoint-steps", "1")
    _train(data, cfg_path, tmp_path / "full", *common)
    _train(data, cfg_path, tmp_path / "killed", *common, "--max-restarts", "1", path=hooks)
    assert mark.read_text() == str(kill_at)  # rank 1 did die there; the run finished by itself
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(tmp_path / "killed" / "last.pt")
    assert a.extra["finished"] and b.extra["finished"] and a.extra["step"] == b.extra["step"]
    diff, key = _max_diff(a.state_dict, b.state_dict)
    assert diff <= 1e-6, f"{key} differs by {diff:.3g}"
