"""Fault injection: SIGKILL `train`, `prune`, `export`, `frontier` at a fixed point, then resume/rerun.

Each test runs the command once uninterrupted (the reference), then runs it again with the fault hook
(graft_edge.fileio.KILL_AT_WRITE_ENV) set: that run SIGKILLs itself at a named atomic write, after the
temp file is complete and before it is renamed into place. The point is a count of writes, not a time,
so the kill lands at the same place of the run on any machine and under any load. After the kill no
file under a final name may be partial; the resumed (or rerun) command must then end with the
reference's outputs (weights, metrics, ONNX outputs, frontier rows).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_train_config

from graft_edge.checkpoint import read_checkpoint
from graft_edge.config import config_to_dict
from graft_edge.fileio import KILL_AT_WRITE_ENV, write_yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop(KILL_AT_WRITE_ENV, None)
    return {**env, KILL_AT_WRITE_ENV: kill_at} if kill_at else env


def _argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "graft_edge", *map(str, args)]


def _run(argv: list[str], log: Path) -> None:
    """Run to completion (rc 0 required)."""
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, timeout=600).returncode
    assert rc == 0, log.read_text()[-3000:]


def _run_killed_at(argv: list[str], write: str, log: Path) -> None:
    """Run the command with the fault hook: it must die by SIGKILL at `write` ("NAME:N", the Nth write of NAME)."""
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=_env(write), cwd=REPO,
                            timeout=600).returncode
    assert rc == -signal.SIGKILL, f"expected a SIGKILL at write {write}, got rc {rc}: {log.read_text()[-3000:]}"


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


def test_train_killed_mid_epoch_resumes_to_the_uninterrupted_result(data: Path, cfg_file: Path,
                                                                     tmp_path: Path) -> None:
    base = ["train", "--config", cfg_file, "--data", data, "--checkpoint-steps", "1"]
    ref = tmp_path / "ref"
    _run(_argv(*base, "--out", ref), tmp_path / "ref.log")
    out = tmp_path / "killed"
    _run_killed_at(_argv(*base, "--out", out), "last.pt:6", tmp_path / "kill.log")  # writing step 6 of 4 per epoch
    _assert_intact(out)
    at_kill = read_checkpoint(out / "last.pt").extra
    assert (at_kill["stage"], at_kill["epoch"], at_kill["batch"], at_kill["step"]) == (1, 1, 1, 5)
    assert list(out.glob(".last.pt.*.tmp"))  # the temp file of step 6, left by the kill
    _run(_argv(*base, "--out", out, "--resume"), tmp_path / "final.log")
    _assert_intact(out)
    for name in ("best.pt", "last.pt", "stage1_best.pt", "stage2_best.pt"):
        _same_state(ref / name, out / name, exact=False)
    assert read_checkpoint(out / "best.pt").meta["mAP"] == read_checkpoint(ref / "best.pt").meta["mAP"]
    rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out)]
    where = [[(r["stage"], r["epoch"], r["step"]) for r in rs] for rs in rows]
    assert where[0] == where[1]
    assert [r["loss"] for r in rows[0]] == pytest.approx([r["loss"] for r in rows[1]], abs=1e-5)
    assert not list(out.glob(".*.tmp")) and not (out / ".graft-edge.lock").exists()


def test_prune_killed_between_steps_resumes_to_identical_weights(data: Path, trained: Path, tmp_path: Path) -> None:
    base = ["prune", trained, "--target", "80%", "--steps", "3", "--data", data, "--finetune-epochs", "1"]
    ref = tmp_path / "ref.pt"
    _run(_argv(*base, "--out", ref), tmp_path / "ref.log")
    out = tmp_path / "killed.pt"
    _run_killed_at(_argv(*base, "--out", out, "--resume"), "killed.pt.partial:2", tmp_path / "kill.log")
    _assert_intact(tmp_path)
    assert not out.exists() and len(read_checkpoint(Path(f"{out}.partial")).history) == 1  # step 1 of 3 kept
    _run(_argv(*base, "--out", out, "--resume"), tmp_path / "final.log")
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


def test_export_killed_before_its_sidecar_reruns_to_the_same_artefacts(trained: Path, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    _run(_argv("export", trained, "--out", ref), tmp_path / "ref.log")
    out = tmp_path / "killed"
    # model.json's first write is the staged one; the second is beside the committed model.onnx
    _run_killed_at(_argv("export", trained, "--out", out), "model.json:2", tmp_path / "kill.log")
    _assert_intact(out)
    assert (out / "model.onnx").is_file() and not (out / "model.json").exists() and not (out / "export.json").exists()
    _run(_argv("export", trained, "--out", out), tmp_path / "final.log")
    _assert_intact(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no staging leftovers
    cfg = read_checkpoint(trained).config.model
    for name in (p.name for p in ref.glob("*.onnx")):
        a = _onnx_embed(ref / name, list(cfg.modalities), tuple(cfg.img_size))
        b = _onnx_embed(out / name, list(cfg.modalities), tuple(cfg.img_size))
        assert np.allclose(a, b, atol=1e-6), name


def test_frontier_killed_while_saving_a_variant_reruns_to_the_same_rows(data: Path, trained: Path,
                                                                        tmp_path: Path) -> None:
    base = ["frontier", trained, "--targets", "80%", "--data", data, "--formats", "torch,onnx", "--finetune-epochs",
            "1", "--iters", "2", "--rounds", "1", "--warmup", "0", "--batch", "2", "--threads", "1"]
    ref = tmp_path / "ref"
    _run(_argv(*base, "--out", ref), tmp_path / "ref.log")
    out = tmp_path / "killed"
    _run_killed_at(_argv(*base, "--out", out), "model.pt:1", tmp_path / "kill.log")  # the pruned variant's checkpoint
    _assert_intact(out)
    (pruned,) = [d for d in (out / "variants").iterdir() if d.name != "dense"]
    assert not (pruned / "model.pt").exists() and (pruned / "model.pt.partial").is_file()
    _run(_argv(*base, "--out", out), tmp_path / "final.log")
    _assert_intact(out)
    keys = ("variant", "format", "params", "params_nonzero", "status")
    rows = [json.loads((d / "frontier.json").read_text())["rows"] for d in (ref, out)]
    assert [tuple(r[k] for k in keys) for r in rows[0]] == [tuple(r[k] for k in keys) for r in rows[1]]
    assert [r["mAP"] for r in rows[0]] == pytest.approx([r["mAP"] for r in rows[1]], abs=1e-9)
    for variant in (ref / "variants").iterdir():
        _same_state(variant / "model.pt", out / "variants" / variant.name / "model.pt", exact=True)
