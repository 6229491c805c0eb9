"""Fault injection: SIGKILL `train`, `prune`, `export`, `frontier` at random points, then resume/rerun.

Each test runs the command once uninterrupted (the reference, also timing it), then kills a second
run a bounded number of times (KILLS) at points drawn from a seeded RNG over that time, checking
after every kill that no file under a final name is partial, and finally lets it finish: its outputs
must equal the reference's (weights, metrics, ONNX outputs, frontier rows).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_train_config

from graft_edge.checkpoint import read_checkpoint
from graft_edge.config import config_to_dict
from graft_edge.fileio import write_yaml

REPO = Path(__file__).resolve().parents[1]
KILLS = 3  # kills per command (bounded: each costs a process start)
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def _argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "graft_edge", *map(str, args)]


def _run(argv: list[str], log: Path) -> float:
    """Run to completion (rc 0 required); returns the wall time."""
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, timeout=600).returncode
    assert rc == 0, log.read_text()[-3000:]
    return time.perf_counter() - start


def _run_and_kill(argv: list[str], delay: float, log: Path) -> bool:
    """Start the command and SIGKILL it after `delay` s; False when it finished first (then rc must be 0)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
        try:
            rc = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return True
    assert rc == 0, log.read_text()[-3000:]
    return False


def _final_names(root: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` under root, leaving out hidden temp files/folders (not final names)."""
    return [p for p in root.rglob(pattern) if not any(part.startswith(".") for part in p.relative_to(root).parts)]


def _assert_intact(root: Path) -> None:
    """Every checkpoint, ONNX model, JSON and YAML file under a final name is complete and readable."""
    import onnx
    import yaml

    if not root.exists():
        return
    for p in _final_names(root, "*.pt") + _final_names(root, "*.partial"):
        read_checkpoint(p)  # GraftError on a truncated file
    for p in _final_names(root, "*.onnx"):
        onnx.checker.check_model(onnx.load(str(p)))
    for p in _final_names(root, "*.json"):
        json.loads(p.read_text())
    for p in _final_names(root, "*.yaml"):
        yaml.safe_load(p.read_text())


def _delays(rng: random.Random, total: float) -> list[float]:
    """KILLS kill times spread over a run of `total` seconds (start-up included)."""
    return [rng.uniform(0.15, 0.9) * total for _ in range(KILLS)]


def _same_state(a: Path, b: Path, exact: bool = True) -> None:
    sa, sb = read_checkpoint(a).state_dict, read_checkpoint(b).state_dict
    assert sa.keys() == sb.keys()
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data") / "syn"
    write_synthetic(root, ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_train_config()
    cfg = replace(cfg, train=replace(cfg.train, stage1=replace(cfg.train.stage1, epochs=3), checkpoint_every=1))
    path = tmp_path_factory.mktemp("cfg") / "cfg.yaml"
    write_yaml(path, config_to_dict(cfg))
    return path


@pytest.fixture(scope="module")
def trained(data: Path, cfg_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a finished tiny run (the input of prune, export and frontier)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    _run(_argv("train", "--config", cfg_file, "--data", data, "--out", out, "--max-steps", "4"), out.parent / "log")
    return out / "best.pt"


def test_train_killed_at_random_points_resumes_to_the_uninterrupted_result(data: Path, cfg_file: Path,
                                                                           tmp_path: Path) -> None:
    base = ["train", "--config", cfg_file, "--data", data, "--checkpoint-steps", "1"]
    ref = tmp_path / "ref"
    total = _run(_argv(*base, "--out", ref), tmp_path / "ref.log")
    out, rng, kills = tmp_path / "killed", random.Random(1501), 0
    for i, delay in enumerate(_delays(rng, total)):
        flag = ["--resume"] if (out / "last.pt").is_file() else (["--overwrite"] if out.exists() else [])
        kills += _run_and_kill(_argv(*base, "--out", out, *flag), delay, tmp_path / f"kill{i}.log")
        _assert_intact(out)
    flag = ["--resume"] if (out / "last.pt").is_file() else (["--overwrite"] if out.exists() else [])
    _run(_argv(*base, "--out", out, *flag), tmp_path / "final.log")
    assert kills >= 1
    _assert_intact(out)
    for name in ("best.pt", "last.pt", "stage1_best.pt", "stage2_best.pt"):
        _same_state(ref / name, out / name, exact=False)
    assert read_checkpoint(out / "best.pt").meta["mAP"] == read_checkpoint(ref / "best.pt").meta["mAP"]
    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out)]
    where = [[(r["stage"], r["epoch"], r["step"]) for r in rs] for rs in rows]
    assert where[0] == where[1]
    assert [r["loss"] for r in rows[0]] == pytest.approx([r["loss"] for r in rows[1]], abs=1e-5)
    assert not list(out.glob(".*.tmp")) and not (out / ".graft-edge.lock").exists()


def test_prune_killed_at_random_points_resumes_to_identical_weights(data: Path, trained: Path,
                                                                    tmp_path: Path) -> None:
    base = ["prune", trained, "--target", "80%", "--steps", "3", "--data", data, "--finetune-epochs", "1"]
    ref = tmp_path / "ref.pt"
    total = _run(_argv(*base, "--out", ref), tmp_path / "ref.log")
    out, rng, kills = tmp_path / "killed.pt", random.Random(1502), 0
    for i, delay in enumerate(_delays(rng, total)):
        kills += _run_and_kill(_argv(*base, "--out", out, "--resume"), delay, tmp_path / f"kill{i}.log")
        _assert_intact(tmp_path)
    _run(_argv(*base, "--out", out, "--resume"), tmp_path / "final.log")
    assert kills >= 1
    _same_state(ref, out, exact=True)
    timeless = [[{k: v for k, v in h.items() if "second" not in k and "time" not in k}
                 for h in read_checkpoint(p).history] for p in (ref, out)]
    assert timeless[0] == timeless[1]  # the same steps, sizes and mAPs
    assert not list(tmp_path.glob(".killed.pt.*")) and not Path(f"{out}.partial").exists()


def _onnx_embed(path: Path, modalities: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Embeddings of fixed random inputs through the runtime layer (which feeds the presence mask)."""
    from graft_edge.runtime import load_embedder

    rng = np.random.default_rng(0)
    feeds = {m: rng.standard_normal((2, 3, *shape)).astype(np.float32) for m in modalities}
    return load_embedder(path).embed(feeds)


def test_export_killed_at_random_points_reruns_to_the_same_artefacts(trained: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    total = _run(_argv("export", trained, "--out", ref), tmp_path / "ref.log")
    out, rng, kills = tmp_path / "killed", random.Random(1503), 0
    for i, delay in enumerate(_delays(rng, total)):
        kills += _run_and_kill(_argv("export", trained, "--out", out), delay, tmp_path / f"kill{i}.log")
        _assert_intact(out)
    _run(_argv("export", trained, "--out", out), tmp_path / "final.log")
    assert kills >= 1
    _assert_intact(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no staging leftovers
    cfg = read_checkpoint(trained).config.model
    for name in (p.name for p in ref.glob("*.onnx")):
        a = _onnx_embed(ref / name, list(cfg.modalities), tuple(cfg.img_size))
        b = _onnx_embed(out / name, list(cfg.modalities), tuple(cfg.img_size))
        assert np.allclose(a, b, atol=1e-6), name


def test_frontier_killed_at_random_points_reruns_to_the_same_rows(data: Path, trained: Path, tmp_path: Path) -> None:
    base = ["frontier", trained, "--targets", "80%", "--data", data, "--formats", "torch,onnx", "--finetune-epochs",
            "1", "--iters", "2", "--rounds", "1", "--warmup", "0", "--batch", "2", "--threads", "1"]
    ref = tmp_path / "ref"
    total = _run(_argv(*base, "--out", ref), tmp_path / "ref.log")
    out, rng, kills = tmp_path / "killed", random.Random(1504), 0
    for i, delay in enumerate(_delays(rng, total)):
        kills += _run_and_kill(_argv(*base, "--out", out), delay, tmp_path / f"kill{i}.log")
        _assert_intact(out)
    _run(_argv(*base, "--out", out), tmp_path / "final.log")
    assert kills >= 1
    _assert_intact(out)
    keys = ("variant", "format", "params", "params_nonzero", "status")
    rows = [json.loads((d / "frontier.json").read_text())["rows"] for d in (ref, out)]
    assert [tuple(r[k] for k in keys) for r in rows[0]] == [tuple(r[k] for k in keys) for r in rows[1]]
    assert [r["mAP"] for r in rows[0]] == pytest.approx([r["mAP"] for r in rows[1]], abs=1e-9)
    for variant in (ref / "variants").iterdir():
        _same_state(variant / "model.pt", out / "variants" / variant.name / "model.pt", exact=True)
