"""Signals: SIGTERM is handled like Ctrl-C, and DDP ranks die with their launcher."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_train import tiny_train_config

from graft_edge.config import config_to_dict
from graft_edge.fileio import write_yaml
from graft_edge.signals import Interrupted, exit_code, sigterm_as_interrupt

REPO = Path(__file__).resolve().parents[1]


def test_sigterm_raises_interrupted_inside_the_block_only() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert info.value.signum == signal.SIGTERM and exit_code(info.value) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert exit_code(KeyboardInterrupt()) == 130


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data") / "syn"
    write_synthetic(root, ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


def _long_config(tmp_path: Path) -> Path:
    """test_train's tiny config with stage 1 long enough to be killed in the middle."""
    cfg = tiny_train_config()
    cfg = replace(cfg, train=replace(cfg.train, stage1=replace(cfg.train.stage1, epochs=5000), eval_every=0))
    path = tmp_path / "long.yaml"
    write_yaml(path, config_to_dict(cfg))
    return path


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start(data: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "graft_edge", "train", "--config", str(_long_config(tmp_path)), "--data", str(data),
            "--out", str(out), "--checkpoint-steps", "0", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # metrics.jsonl appears after the first epoch: every rank is training
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    return proc, out


@pytest.mark.slow
def test_sigterm_to_single_process_train_is_a_clean_interrupt(data: Path, tmp_path: Path) -> None:
    proc, out = _start(data, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and "internal error" not in err and "Traceback" not in err
    assert not (out / "best.pt").exists() and not (out / ".graft-edge.lock").exists()


@pytest.mark.slow
def test_sigterm_to_ddp_launcher_is_a_clean_interrupt(data: Path, tmp_path: Path) -> None:
    proc, out = _start(data, tmp_path, "--nproc", "2")
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted by SIGTERM" in err and "internal error" not in err and "SignalException" not in err
    assert not any(_alive(r) for r in ranks)


@pytest.mark.slow
def test_ranks_die_with_a_sigkilled_launcher(data: Path, tmp_path: Path) -> None:
    proc, out = _start(data, tmp_path, "--nproc", "2")
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while any(_alive(r) for r in ranks) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [r for r in ranks if _alive(r)]
    for r in survivors:  # clean up before failing
        os.kill(r, signal.SIGKILL)
    assert survivors == [], "ranks outlived their SIGKILLed launcher"
    assert not (out / "best.pt").exists()
