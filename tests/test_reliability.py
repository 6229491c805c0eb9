"""Hostile-input and fault repros: each test is one defect a hostile probe of the CLI found, small and fast."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from PIL import Image
from test_train import tiny_train_config
from typer.testing import CliRunner

from graft_edge import checkpoint, fileio
from graft_edge.checkpoint import read_checkpoint, save_checkpoint
from graft_edge.cli.common import guarded
from graft_edge.cli.main import app
from graft_edge.config import PRESETS, backbone_geometry, config_to_dict, get_preset, validate
from graft_edge.data import images
from graft_edge.data.dataset import load_images
from graft_edge.data.images import decode_rgb
from graft_edge.data.layouts import Sample, Source
from graft_edge.data.synthetic import write_synthetic
from graft_edge.errors import GraftError
from graft_edge.export import pipeline
from graft_edge.fileio import write_yaml
from graft_edge.model import build_model
from graft_edge.outdir import OutputLock
from graft_edge.workflows.prune import PruneRequest, partial_path, run_prune

runner = CliRunner()
TINY_SYNTH = ["--ids", "4", "--cameras", "2", "--images-per-camera", "1", "--height", "16", "--width", "32"]


# ---------------------------------------------------------------- 1. synth --overwrite owns only its own entries

def test_synth_overwrite_keeps_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "u"
    (out / "sub").mkdir(parents=True)
    (out / "precious.txt").write_text("x")
    res = runner.invoke(app, ["synth", "--out", str(out), "--overwrite", *TINY_SYNTH])
    assert res.exit_code == 0, res.output
    assert (out / "precious.txt").read_text() == "x" and (out / "sub").is_dir()
    assert (out / "graft_dataset.json").is_file() and len(list((out / "rgbir" / "query").iterdir())) > 0
    # a second overwrite replaces the set (other seed -> other metadata) and still keeps the foreign entries
    res = runner.invoke(app, ["synth", "--out", str(out), "--overwrite", "--seed", "3", *TINY_SYNTH])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "graft_dataset.json").read_text())["seed"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["graft_dataset.json", "precious.txt", "rgbir", "sub"]


def test_synth_overwrite_refuses_a_real_dataset(tmp_path: Path) -> None:
    out = tmp_path / "real"
    (out / "rgbir" / "query").mkdir(parents=True)
    (out / "rgbir" / "query" / "0001_c001_000.jpg").write_bytes(b"not ours")
    res = runner.invoke(app, ["synth", "--out", str(out), "--overwrite", *TINY_SYNTH])
    assert res.exit_code == 2 and "was not written by `synth`" in res.output
    assert (out / "rgbir" / "query" / "0001_c001_000.jpg").read_bytes() == b"not ours"


# ---------------------------------------------------------------- 2. divergence is an error, never best.pt

def tiny_cfg_file(tmp_path: Path, **train_changes) -> Path:
    """tests/test_train.py's tiny config as a YAML file for the CLI."""
    path = tmp_path / "tiny.yaml"
    write_yaml(path, config_to_dict(tiny_train_config(**train_changes)))
    return path


@pytest.mark.parametrize("lr", ["1e30", "1e12"])
def test_diverged_training_is_an_error_and_writes_no_best(tiny_data: Path, tmp_path: Path, lr: str) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(tiny_data),
                              "--out", str(out), "--max-steps", "3", "--set", f"train.stage1.lr={lr}"])
    assert res.exit_code == 2, res.output
    assert "training diverged" in res.output
    assert not (out / "best.pt").exists() and not (out / "stage1_best.pt").exists()


def test_eval_refuses_nan_weights(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config()
    model = build_model(cfg.model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # the first patch embedding: every output is NaN
    ckpt = tmp_path / "nan.pt"
    save_checkpoint(ckpt, model, cfg)
    res = runner.invoke(app, ["eval", str(ckpt), "--data", str(tiny_data)])
    assert res.exit_code == 2 and "non-finite embeddings" in res.output and str(ckpt) in res.output
    assert "mAP" not in res.output
    res = runner.invoke(app, ["bench", str(ckpt), "--iters", "1", "--warmup", "0", "--data", str(tiny_data)])
    assert res.exit_code == 1 and "non-finite embeddings" in " ".join(res.output.split()), res.output


# ---------------------------------------------------------------- 3. one run per output folder

HOLDER = """
import sys, time
from graft_edge.outdir import OutputLock
OutputLock(sys.argv[1], "train").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_second_run_into_a_locked_folder_fails_fast_naming_the_holder(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(tiny_data), "--out", str(out),
                "--max-steps", "1"]
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and f"in use by another train (PID {holder.pid})" in res.output, res.output
        assert sorted(p.name for p in out.iterdir()) == [".graft-edge.lock"]  # nothing of ours was written
        holder.send_signal(signal.SIGKILL)  # a killed holder's lock is dropped by the kernel
        holder.wait(timeout=30)
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert (out / "best.pt").is_file() and not (out / ".graft-edge.lock").exists()
    finally:
        holder.kill()
        holder.wait()


def test_failed_start_leaves_no_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(empty),
                              "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()


@pytest.mark.parametrize("setting, needle", [
    ("model.backbone=nope_vit_tiny", "unknown timm backbone 'nope_vit_tiny'"),
    ("model.pretrained_file=missing.pth", "missing.pth"),
])
@pytest.mark.parametrize("folder", ["absent", "empty"])
def test_train_failing_at_model_build_leaves_its_folder_as_it_was(tiny_data: Path, tmp_path: Path, setting: str,
                                                                  needle: str, folder: str) -> None:
    out = tmp_path / "run"
    if folder == "empty":
        out.mkdir()
    args = ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(tiny_data), "--out", str(out),
            "--max-steps", "1"]
    extra = ["--set", "model.pretrained=true"] if "pretrained_file" in setting else []
    res = runner.invoke(app, [*args, "--set", setting, *extra])
    assert res.exit_code == 2 and needle in " ".join(res.output.split()), res.output
    assert (list(out.iterdir()) == []) if folder == "empty" else not out.exists()
    res = runner.invoke(app, args)  # the next run starts (no "not empty", nothing to --resume)
    assert res.exit_code == 0 and (out / "best.pt").is_file(), res.output


def test_resume_of_a_run_that_stopped_before_its_first_checkpoint_says_overwrite(tiny_data: Path,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(tiny_data), "--out", str(out)]
    res = runner.invoke(app, [*args, "--max-steps", "3", "--set", "train.stage1.lr=1e30"])
    assert res.exit_code == 2 and "training diverged" in res.output and not (out / "last.pt").exists()
    res = runner.invoke(app, [*args, "--resume"])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "stopped before its first checkpoint: start it again with --overwrite" in line


# ---------------------------------------------------------------- 4, 11. image decoding: bit depth, modes, size

@pytest.mark.parametrize("mode,dtype", [("I;16", "uint16"), ("I", "int32"), ("F", "float32")])
def test_wide_images_are_stretched_not_saturated(tmp_path: Path, mode: str, dtype: str) -> None:
    ramp = np.linspace(1000, 9000, 16 * 96).reshape(16, 96).astype(dtype)  # thermal counts, far above 255
    path = tmp_path / ("t.png" if mode == "I;16" else "t.tif")
    Image.fromarray(ramp, mode=mode if mode != "I;16" else None).save(path)
    assert Image.open(path).mode.startswith(mode[:1])
    sample = Sample(sources=tuple(Source(m, path, i, 3) for i, m in enumerate(("rgb", "nir", "tir"))), pid=1, camid=1,
                    frame=0)
    images = load_images(sample, ("rgb", "nir", "tir"))
    arrs = [np.asarray(images[m]) for m in ("rgb", "nir", "tir")]
    whole = np.concatenate(arrs, axis=1)[..., 0].astype(int)
    assert whole.min() == 0 and whole.max() == 255  # the file's own range maps to 0..255
    expected = np.round((ramp.astype(float) - 1000) * 255 / 8000).astype(int)
    assert np.abs(whole - expected).max() <= 1


def test_rgba_palette_and_gray_images_decode_to_rgb(tmp_path: Path) -> None:
    rgb = (np.arange(8 * 8 * 3) % 256).astype("uint8").reshape(8, 8, 3)
    for mode in ("RGBA", "P", "L", "LA", "1"):
        path = tmp_path / f"x_{mode}.png"
        Image.fromarray(rgb).convert(mode).save(path)
        img = decode_rgb(path)
        assert img.mode == "RGB" and img.size == (8, 8)
    assert np.array_equal(np.asarray(decode_rgb(tmp_path / "x_RGBA.png")), rgb)


def test_decompression_bomb_is_one_line_naming_the_file(tiny_data: Path, tmp_path: Path,
                                                       tiny_checkpoint_16: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    gallery = data / "rgbir" / "bounding_box_test"
    victim = sorted(gallery.iterdir())[0]
    victim.unlink()
    bomb = gallery / (victim.stem + ".png")
    Image.new("1", (20000, 20000)).save(bomb)
    res = runner.invoke(app, ["eval", str(tiny_checkpoint_16), "--data", str(data)])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert str(bomb) in line and "too large to decode safely" in line and "internal error" not in line


def test_image_over_our_pixel_limit_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 200 - 1)
    for fn in (images.decode_rgb, images.image_size):
        with pytest.raises(GraftError, match=r"big.png is too large to decode safely: 300x200 pixels"):
            fn(path)


@pytest.fixture
def tiny_checkpoint_16(tmp_path: Path) -> Path:
    """An untrained checkpoint of test_train's tiny config (16x32 slots, 4 ids)."""
    torch.manual_seed(0)
    cfg = tiny_train_config()
    path = tmp_path / "tiny16.pt"
    save_checkpoint(path, build_model(cfg.model), cfg)
    return path


# ---------------------------------------------------------------- 12 + stale temps: --overwrite and leftovers

def _train(tiny_data: Path, tmp_path: Path, out: Path, *extra: str):
    return runner.invoke(app, ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(tiny_data),
                               "--out", str(out), "--max-steps", "1", *extra])


def test_overwrite_unlinks_a_symlinked_tb_and_keeps_its_target(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(tiny_data, tmp_path, out).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")

    shutil.rmtree(out / "tb")
    (out / "tb").symlink_to(elsewhere, target_is_directory=True)
    (out / "notes.txt").write_text("foreign")
    res = _train(tiny_data, tmp_path, out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert (elsewhere / "keep.txt").read_text() == "mine" and (out / "notes.txt").read_text() == "foreign"
    assert (out / "tb").is_dir() and not (out / "tb").is_symlink() and (out / "best.pt").is_file()


def test_next_run_removes_temp_files_a_killed_run_left(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(tiny_data, tmp_path, out).exit_code == 0
    stale = [out / ".last.pt.k1ll3d.tmp", out / ".best.pt.x9.tmp", out / ".config.yaml.ab.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (out / ".user.tmp").write_text("not ours")
    res = _train(tiny_data, tmp_path, out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in stale) and (out / ".user.tmp").exists()


# ---------------------------------------------------------------- 8. a full disk is one line naming the path

ENOSPC_TEXT = "No space left on device"


def test_train_on_a_full_disk_names_the_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    real_save = torch.save

    def full_disk(obj, f, *a, **k):  # torch's zip writer on ENOSPC: a RuntimeError naming no file
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3121088 vs 3120976")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(tiny_data),
                              "--out", str(out), "--max-steps", "2"])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "internal error" not in line, res.output
    assert f"cannot write {out}" in line and "the write failed" in line
    assert not list(out.glob("*.pt")) and not list(out.glob(".*.tmp"))  # nothing partial, under any name


def test_oserror_enospc_while_writing_names_the_file(tmp_path: Path, monkeypatch) -> None:
    def no_space(src, dst):
        raise OSError(errno.ENOSPC, ENOSPC_TEXT)

    monkeypatch.setattr(fileio.os, "replace", no_space)
    target = tmp_path / "config.yaml"
    with pytest.raises(GraftError, match=f"cannot write {target}: {ENOSPC_TEXT}"):
        fileio.write_text(target, "x: 1\n")
    assert os.listdir(tmp_path) == []


def test_export_on_a_full_disk_names_the_folder(tmp_path: Path, tiny_checkpoint_16: Path, monkeypatch) -> None:
    def no_space(staged, dest):
        raise OSError(errno.ENOSPC, ENOSPC_TEXT)  # as onnx/onnxruntime raise it: no file named

    monkeypatch.setattr(pipeline, "_commit", no_space)
    out = tmp_path / "exp"
    res = runner.invoke(app, ["export", str(tiny_checkpoint_16), "--out", str(out)])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and f"cannot write the export to {out}: {ENOSPC_TEXT}" in line, res.output
    assert not list(out.glob(".graft-export-*")) and not (out / "model.onnx").exists()


def test_stray_oserror_is_one_line_with_the_path() -> None:
    @guarded
    def cmd() -> None:
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.json")

    app2 = typer.Typer()
    app2.command()(cmd)
    res = runner.invoke(app2, [])
    assert res.exit_code == 1 and res.output.strip() == "error: Read-only file system: /mnt/ro/x.json"


# ---------------------------------------------------------------- 9. no valid query is an error, not mAP 0

@pytest.mark.parametrize("cameras", ["one", "disjoint"])
def test_eval_and_train_refuse_data_without_a_valid_query(tiny_data: Path, tmp_path: Path,
                                                         tiny_checkpoint_16: Path, cameras: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    query = data / "rgbir" / "query"
    for f in sorted(query.iterdir()):
        pid, cam, frame = f.stem.split("_")
        if cameras == "one":  # every gallery match of a query id is from the query's own camera
            gallery_cams = {g.stem.split("_")[1] for g in (data / "rgbir" / "bounding_box_test").glob(f"{pid}_*")}
            for g in (data / "rgbir" / "bounding_box_test").glob(f"{pid}_*"):
                g.rename(g.with_name(g.name.replace(g.stem.split("_")[1], cam)))
            assert gallery_cams
        else:  # query ids that the gallery never shows
            f.rename(f.with_name(f"{9000 + int(pid):04d}_{cam}_{frame}{f.suffix}"))
    res = runner.invoke(app, ["eval", str(tiny_checkpoint_16), "--data", str(data)])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and "has a valid match" in line and "mAP 0" not in line, res.output
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(tiny_cfg_file(tmp_path)), "--data", str(data),
                              "--out", str(out), "--max-steps", "1"])
    assert res.exit_code == 2 and "has a valid match" in res.output and not out.exists()


# ---------------------------------------------------------------- 10. the resolved config is validated up front

@pytest.mark.parametrize("setting, key", [
    ("train.stage1.lr=-0.005", "train.stage1.lr"),
    ("train.stage1.lr=.nan", "train.stage1.lr"),
    ("train.stage2.lr=.inf", "train.stage2.lr"),
    ("model.enc_heads=3", "model.enc_heads=3"),
    ("model.enc_dropout=1.5", "model.enc_dropout"),
    ("train.stage1.epochs=-1", "train.stage1.epochs"),
    ("train.stage1.warmup_steps=-5", "train.stage1.warmup_steps"),
    ("train.stage2.loss.label_smoothing=1", "train.stage2.loss.label_smoothing"),
    ("train.stage1.betas=[0.9,1.2]", "train.stage1.betas"),
    ("data.erase=2", "data.erase"),
    ("model.std=[0.5,0,0.5]", "model.std"),
    ("model.img_size=[30,64]", "model.img_size"),
    ("model.data_token_index=999", "model.data_token_index"),
    ("model.pretrained_file=w.pth", "model.pretrained is false"),
    ("data.eval_batch_size=100000000000000000000", "data.eval_batch_size=100000000000000000000: expected an integer of"),
    ("train.stage1.epochs=true", "train.stage1.epochs: expected an integer, got True"),
    ("train.stage1.lr=false", "train.stage1.lr: expected a number, got False"),
    ("train.seed=4294967296", "train.seed=4294967296: expected a finite number >= 0 and <= 4294967295"),
    ("data.val_seed=-1", "data.val_seed=-1"),
])
def test_bad_config_value_names_its_key_and_creates_nothing(tiny_data: Path, tmp_path: Path, setting: str,
                                                           key: str) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--preset", "synthetic", "--data", str(tiny_data), "--out", str(out),
                              "--set", setting])
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and key in line and "internal error" not in line, res.output
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--node-rank", "3"], "--node-rank 3 is not in 0..0"),
    (["--master-port", "70000"], "--master-port 70000"),
])
def test_bad_launch_options_are_refused_even_single_process(tiny_data: Path, tmp_path: Path, extra, needle) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--preset", "synthetic", "--data", str(tiny_data), "--out", str(out), *extra])
    assert res.exit_code == 2 and needle in res.output and not out.exists()


def test_init_refuses_pretrained_file_without_pretrained(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    res = runner.invoke(app, ["init", "synthetic", "--out", str(tmp_path / "m.pt"), "--pretrained-file", str(weights)])
    assert res.exit_code == 2 and "--pretrained" in res.output and not (tmp_path / "m.pt").exists()


def test_presets_pass_validation() -> None:
    for name in PRESETS:
        validate(get_preset(name))
    assert backbone_geometry(get_preset("rgbnt100").model) == (768, 16)
    assert backbone_geometry(get_preset("synthetic").model) == (64, 8)


# ---------------------------------------------------------------- 13. plain mistakes are one line, not internal errors

@pytest.mark.parametrize("make_args, needle", [
    (lambda d, ck, data: ["init", "synthetic", "--out", str(d)], "is a folder"),
    (lambda d, ck, data: ["eval", str(ck), "--data", str(data), "--json", str(d)], "--json"),
    (lambda d, ck, data: ["eval", str(ck), "--data", str(data), "--threads", "-3"], "--threads"),
    (lambda d, ck, data: ["prune", str(ck), "--out", str(d), "--target", "50%"], "is a folder"),
    (lambda d, ck, data: ["bench", str(ck), "--iters", "1", "--json", str(d)], "is a folder"),
])
def test_plain_mistakes_are_user_errors(tiny_data: Path, tmp_path: Path, tiny_checkpoint_16: Path, make_args,
                                        needle: str) -> None:
    existing_dir = tmp_path / "a_folder"
    existing_dir.mkdir()
    res = runner.invoke(app, make_args(existing_dir, tiny_checkpoint_16, tiny_data))
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and needle in line and "internal error" not in line, res.output
    assert list(existing_dir.iterdir()) == []


# ---------------------------------------------------------------- 15. demo/frontier targets are checked before work

@pytest.mark.parametrize("targets", ["150%", "0%", "70%,lots", "-5M"])
def test_demo_rejects_bad_targets_before_any_work(tmp_path: Path, targets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from graft_edge.workflows import demo

    def work(*args, **kwargs):
        raise AssertionError("the demo started work before checking --targets")

    for name in ("write_synthetic", "run_training", "run_frontier"):  # no data set, no training, no frontier
        monkeypatch.setattr(demo, name, work)
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--fast", "--out", str(out), "--targets", targets, "--threads", "1"])
    assert res.exit_code == 2 and "--targets" in res.output and "internal error" not in res.output, res.output
    assert not out.exists()


# ---------------------------------------------------------------- smaller: prune finetuning is seeded and resumable

def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint(a).state_dict, read_checkpoint(b).state_dict
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_prune_with_finetuning_is_seeded_and_resumes_to_identical_weights(tiny_data: Path, tmp_path: Path,
                                                                          tiny_checkpoint_4ids: Path) -> None:
    req = PruneRequest(target="70%", steps=2, data=tiny_data, finetune_epochs=1)
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    torch.manual_seed(123)  # different global RNG states before each call: the run must not depend on them
    run_prune(tiny_checkpoint_4ids, a, req)
    torch.manual_seed(456)
    run_prune(tiny_checkpoint_4ids, b, req)
    assert _same_weights(a, b)

    def stop_after_first(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_checkpoint_4ids, c, req, progress=stop_after_first)
    assert partial_path(c).is_file() and not c.exists()
    torch.manual_seed(789)
    res = run_prune(tiny_checkpoint_4ids, c, req, resume=True)
    assert res.resumed_steps == 1 and _same_weights(a, c)


@pytest.fixture(scope="module")
def interrupted_prune(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PruneRequest]:
    """A prune run with finetuning killed after step 1 of 2: (its data, its OUT, its request)."""
    base = tmp_path_factory.mktemp("interrupted-prune")
    cfg = tiny_train_config()
    cfg = replace(cfg, model=replace(cfg.model, num_ids=4))
    torch.manual_seed(0)
    ckpt = save_checkpoint(base / "dense.pt", build_model(cfg.model), cfg)
    data = base / "data"
    shutil.copytree(tiny_data, data)
    req = PruneRequest(target="70%", steps=2, data=data, finetune_epochs=1)

    def stop_after_first(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prune(ckpt, base / "p.pt", req, progress=stop_after_first)
    return ckpt, base, req


def _copy_run(interrupted: tuple[Path, Path, PruneRequest], tmp_path: Path) -> tuple[Path, Path, PruneRequest]:
    ckpt, base, req = interrupted
    shutil.copytree(base, tmp_path / "run")
    return ckpt, tmp_path / "run", replace(req, data=tmp_path / "run" / "data")  # the same data at another path


@pytest.mark.parametrize("change, needle", [
    ("other data", "--data differs"),
    ("regenerated data", "--data differs"),
    ("finetune_epochs", "finetune_epochs differs: 1 then, 2 now"),
    ("fraction", "fraction differs: 0.2 then, 0.3 now"),
])
def test_prune_resume_refuses_a_request_with_other_data_or_finetuning(interrupted_prune, tmp_path: Path,
                                                                      change: str, needle: str) -> None:
    ckpt, run, req = _copy_run(interrupted_prune, tmp_path)
    if change == "other data":
        write_synthetic(tmp_path / "other", ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=1)
        req = replace(req, data=tmp_path / "other")
    elif change == "regenerated data":  # the same folder, other images: caught by the fingerprint, not the path
        shutil.rmtree(req.data)
        write_synthetic(req.data, ids=8, cameras=3, images_per_camera=2, size=(16, 32), seed=0)
    else:
        req = replace(req, **{change: {"finetune_epochs": 2, "fraction": 0.3}[change]})
    with pytest.raises(GraftError, match=needle):
        run_prune(ckpt, run / "p.pt", req, resume=True)
    assert read_checkpoint(partial_path(run / "p.pt")).extra["prune_run"]["done"] == 1  # kept for the same run


def test_prune_resume_with_the_same_data_moved_elsewhere_continues(interrupted_prune, tmp_path: Path) -> None:
    ckpt, run, req = _copy_run(interrupted_prune, tmp_path)
    res = run_prune(ckpt, run / "p.pt", req, resume=True)
    assert res.resumed_steps == 1 and [e["step"] for e in res.history] == [1, 2]


@pytest.mark.parametrize("command", ["synth", "export", "prune"])
def test_every_writer_refuses_a_folder_in_use(tmp_path: Path, tiny_checkpoint_16: Path, command: str) -> None:
    out = tmp_path / ("p.pt" if command == "prune" else "out")
    args = {"synth": ["synth", "--out", str(out), *TINY_SYNTH],
            "export": ["export", str(tiny_checkpoint_16), "--out", str(out)],
            "prune": ["prune", str(tiny_checkpoint_16), "--out", str(out), "--target", "90%"]}[command]
    lock = OutputLock.for_file(out, "prune") if command == "prune" else OutputLock(out, command)
    with lock:  # another open file description: flock conflicts even within one process
        res = runner.invoke(app, args)
    line = " ".join(res.output.split())
    assert res.exit_code == 2 and f"in use by another {command} (PID {os.getpid()})" in line, res.output
    res = runner.invoke(app, args)  # free again
    assert res.exit_code == 0, res.output


def test_synth_removes_its_own_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "u"
    (out / ".synth-tmp-k1ll3d" / "rgbir").mkdir(parents=True)
    res = runner.invoke(app, ["synth", "--out", str(out), *TINY_SYNTH])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["graft_dataset.json", "rgbir"]


@pytest.mark.slow
def test_simultaneous_trains_into_one_folder_one_wins(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = []
    for seed in range(4):  # different configs: a mixed-up folder would show in config.yaml vs best.pt
        argv = [sys.executable, "-m", "graft_edge", "train", "--config", str(tiny_cfg_file(tmp_path / f"c{seed}")),
                "--data", str(tiny_data), "--out", str(out), "--max-steps", "2", "--set", f"train.seed={seed}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    winners = [i for i, (rc, _) in enumerate(results) if rc == 0]
    assert len(winners) == 1, results  # later starters find the folder locked, or (once it is done) not empty
    for rc, text in results:
        line = " ".join(text.split())
        assert rc == 0 or (rc == 2 and ("in use by another train (PID" in line or "is not empty" in line)), text
    seed = winners[0]
    assert read_checkpoint(out / "best.pt").config.train.seed == seed
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == seed
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one run's lines, not interleaved
