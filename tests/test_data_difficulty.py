"""Difficulty knobs of the synthetic set: the easy preset keeps the original bytes, hard is deterministic,
each knob moves the pixels the way it says, bad names/values are one-line errors (library and CLI)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from graft_edge.data import difficulty as dif
from graft_edge.data import render
from graft_edge.data.difficulty import Difficulty, get_difficulty
from graft_edge.data.synthetic import assign_identities, render_image, write_synthetic
from graft_edge.errors import GraftError

TINY = dict(ids=8, cameras=4, images_per_camera=2, size=(32, 48), seed=3)
# Mean grey level of every decoded .jpg of write_synthetic(**TINY), in sorted path order, from the images the generator
# wrote before the difficulty knobs existed: a regression check that the default (easy) preset still draws the
# original images. Compared within MEAN_TOLERANCE, not as bytes: NumPy's float32 math (exp, power) and the JPEG
# encoder may differ in the last bit between CPUs and library versions (a grey level more or less on some pixels
# barely moves a mean), while any change of what is drawn (another seed, a knob that moves the base renderer's
# draws) moves the means of most images by whole grey levels.
EASY_TINY_MEANS = (
    65.25, 66.45, 85.82, 90.79, 100.81, 98.83, 63.95, 64.85, 91.62, 87.14, 86.22, 98.77, 61.35, 89.07, 85.67, 94.2,
    99.49, 106.62, 62.71, 62.07, 86.06, 87.47, 92.21, 94.25, 67.45, 58.7, 89.77, 89.61, 87.87, 95.74, 103.02, 104.37,
    61.57, 63.25, 84.18, 88.83, 86.31, 91.13, 104.03, 99.58, 68.62, 67.82, 90.35, 90.82, 89.15, 88.66, 96.58, 100.89,
    61.86, 57.61, 87.39, 89.01, 87.95, 89.07, 94.76, 99.29, 88.65, 85.74, 88.0, 103.54, 66.09, 91.81, 98.94, 99.18,
)
MEAN_TOLERANCE = 0.25


def _image_means(root: Path) -> np.ndarray:
    return np.array([np.asarray(Image.open(p), dtype=np.float64).mean() for p in sorted(root.rglob("*.jpg"))])


def _images(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_easy_preset_writes_the_original_images(tmp_path: Path) -> None:
    s = write_synthetic(tmp_path / "e", **TINY)
    means = _image_means(s.root)
    assert len(means) == len(EASY_TINY_MEANS) == 64
    assert np.abs(means - np.array(EASY_TINY_MEANS)).max() <= MEAN_TOLERANCE
    assert _images(write_synthetic(tmp_path / "n", difficulty="easy", **TINY).root) == _images(s.root)  # byte for byte
    meta = json.loads((s.root / "graft_dataset.json").read_text())
    assert meta["difficulty"] == Difficulty().record() and meta["cue_values"] == 4


def test_hard_preset_is_deterministic_and_recorded(tmp_path: Path) -> None:
    a = _files(write_synthetic(tmp_path / "a", difficulty="hard", **TINY).root)
    b = _files(write_synthetic(tmp_path / "b", difficulty="hard", **TINY).root)
    assert a == b  # every byte, metadata included
    assert np.abs(_image_means(tmp_path / "a") - np.array(EASY_TINY_MEANS)).max() > 1.0  # not the easy images
    c = _files(write_synthetic(tmp_path / "c", difficulty="hard", **{**TINY, "seed": 4}).root)
    pixels_a = {Path(k).name: v for k, v in a.items() if k.endswith(".jpg")}
    pixels_c = {Path(k).name: v for k, v in c.items() if k.endswith(".jpg")}
    assert set(pixels_a) == set(pixels_c) and all(pixels_a[k] != pixels_c[k] for k in pixels_a)  # another seed
    meta = json.loads(a["graft_dataset.json"])
    assert meta["difficulty"]["name"] == "hard" and meta["cue_values"] == dif.PRESETS["hard"].min_cue_values
    gains = [g for cam in meta["camera_nuisance"].values() for g in cam["gains"].values()]
    ill = dif.PRESETS["hard"].illumination
    assert len(gains) == 12 and all(1 - ill <= g <= 1 + ill for g in gains) and len(set(gains)) == 12


def test_more_cue_values() -> None:
    idents, k = assign_identities(20, ("rgb", "nir", "tir"), 0, min_values=8)
    assert k == 8 and max(max(i.cues) for i in idents) >= 5  # cue values beyond the original 4 are used
    assert assign_identities(20, ("rgb", "nir", "tir"), 0)[1] == 4


def _cam(diff: Difficulty, seed: int = 0) -> dif.CameraNuisance:
    return dif.camera_nuisance(diff, np.random.default_rng(seed), ("rgb", "nir", "tir"))


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_noise_raises_std_of_a_flat_region(sigma: float) -> None:
    cam = _cam(Difficulty(noise=sigma))
    views = {"nir": np.full((64, 64), 0.5, np.float32)}
    dif.apply_camera(views, cam, np.random.default_rng(1))
    assert 0.5 * sigma * 0.9 <= float(views["nir"].std()) <= sigma * 1.1
    assert abs(float(views["nir"].mean()) - 0.5) < 0.01


def test_blur_lowers_high_frequencies_and_keeps_the_mean() -> None:
    img = np.random.default_rng(0).random((32, 64), dtype=np.float32)
    out = dif.gaussian_blur(img, 1.5)
    assert np.abs(np.diff(out, axis=1)).mean() < 0.3 * np.abs(np.diff(img, axis=1)).mean()
    assert abs(float(out.mean()) - float(img.mean())) < 0.01 and out.shape == img.shape
    assert dif.gaussian_blur(img, 0.0) is img


def test_illumination_and_hue_rotation() -> None:
    cams = [_cam(Difficulty(illumination=0.4), s) for s in range(20)]
    gains = [c.gains["tir"] for c in cams]
    assert 0.6 <= min(gains) < 0.9 and 1.1 < max(gains) <= 1.4
    views = {"tir": np.full((8, 8), 0.5, np.float32)}
    dif.apply_camera(views, cams[0], np.random.default_rng(0))
    assert np.allclose(views["tir"], 0.5 * cams[0].gains["tir"])
    rot = dif.hue_rotation(120.0)
    assert np.allclose(rot @ np.array([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-6)  # red -> green
    assert np.allclose(rot @ np.array([0.3, 0.3, 0.3]), 0.3, atol=1e-6)  # greys stay grey
    assert np.allclose(dif.hue_rotation(0.0), np.eye(3))


@pytest.mark.parametrize("occlusion", [0.1, 0.4])
def test_partial_occluder_covers_a_bounded_fraction_in_every_sensor(occlusion: float) -> None:
    diff = Difficulty(occlusion=occlusion, occlusion_prob=1.0)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        views = {"rgb": rng.random((32, 64, 3), dtype=np.float32), "nir": rng.random((32, 64), dtype=np.float32)}
        before = {m: v.copy() for m, v in views.items()}
        frac = dif.add_partial_occluder(views, diff, rng)
        changed = {m: (views[m] != before[m]).reshape(32, 64, -1).any(-1) for m in views}
        assert np.array_equal(changed["rgb"], changed["nir"])  # the same place in every sensor
        assert 0.25 * occlusion * 0.8 <= changed["nir"].mean() <= occlusion and changed["nir"].mean() == pytest.approx(frac)
    assert dif.add_partial_occluder(views, Difficulty(occlusion=0.4, occlusion_prob=0.0), rng) == 0.0


def test_degraded_sensor_has_lower_contrast() -> None:
    rng = np.random.default_rng(0)
    views = {m: rng.random((32, 64), dtype=np.float32) for m in ("rgb", "nir", "tir")}
    before = {m: v.copy() for m, v in views.items()}
    m = dif.degrade_one(views, Difficulty(degrade_prob=1.0, degrade_contrast=0.3), rng)
    assert m in views
    assert views[m].std() < 0.4 * before[m].std()
    assert all(np.array_equal(views[o], before[o]) for o in views if o != m)  # one sensor only


def test_each_knob_changes_the_rendered_image_and_jitter_moves_the_vehicle() -> None:
    idents, k = assign_identities(4, ("rgb", "nir", "tir"), 0)
    cam = render.make_camera(np.random.default_rng(1), (32, 64), False, 4)
    base = render_image(idents[0], ("rgb", "nir", "tir"), cam, k, (32, 64), (0, 1, 1, 0))
    for key, value in [("noise", 0.1), ("blur", 2.0), ("illumination", 0.5), ("hue_shift", 60.0), ("jitter", 0.3)]:
        diff = replace(Difficulty(), **{key: value})
        out = render_image(idents[0], ("rgb", "nir", "tir"), cam, k, (32, 64), (0, 1, 1, 0), diff,
                           dif.camera_nuisance(diff, np.random.default_rng(2), ("rgb", "nir", "tir")))
        assert np.abs(out.astype(float) - base).mean() > 1.0, key
    scales = [dif.jitter_offsets(Difficulty(jitter=0.2), np.random.default_rng(s)) for s in range(50)]
    assert all(0.8 <= s <= 1.2 and abs(dx) <= 0.1 and abs(dy) <= 0.1 for s, dx, dy in scales)
    assert max(s for s, _, _ in scales) - min(s for s, _, _ in scales) > 0.2


@pytest.mark.parametrize("name, overrides, message", [
    ("medium", (), "unknown difficulty 'medium'"),
    ("hard", ("fog=1",), "--knob 'fog=1'"),
    ("hard", ("noise",), "--knob 'noise'"),
    ("hard", ("noise=lots",), "'lots' is not a number"),
    ("hard", ("noise=0.9",), "noise=0.9: expected a number in [0.0, 0.5]"),
    ("easy", ("min_cue_values=2",), "min_cue_values=2"),
    ("easy", {"blur": float("nan")}, "blur=nan"),
])
def test_bad_difficulty_is_one_line(name: str, overrides, message: str) -> None:
    with pytest.raises(GraftError) as err:
        get_difficulty(name, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_overrides_change_only_their_knobs() -> None:
    hard = dif.PRESETS["hard"]
    d = get_difficulty("hard", ["noise=0.1", "min_cue_values=9"])
    assert (d.noise, d.min_cue_values) == (0.1, 9) and isinstance(d.min_cue_values, int)
    assert replace(d, noise=hard.noise, min_cue_values=hard.min_cue_values, name="hard") == hard


def test_cli_synth_difficulty(tmp_path: Path) -> None:
    from graft_edge.cli.main import app

    runner = CliRunner()
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--ids", "6", "--cameras", "2", "--images-per-camera", "1", "--height", "16",
            "--width", "32"]
    res = runner.invoke(app, [*args, "--difficulty", "hard", "--knob", "noise=0.1"])
    assert res.exit_code == 0, res.output
    assert "difficulty hard+noise=0.1" in res.output
    assert f"({dif.PRESETS['hard'].min_cue_values} values per cue)" in res.output
    meta = json.loads((out / "graft_dataset.json").read_text())
    assert meta["difficulty"]["noise"] == 0.1 and meta["difficulty"]["occlusion"] == dif.PRESETS["hard"].occlusion
    for bad, message in [(["--difficulty", "nope"], "unknown difficulty 'nope'"),
                         (["--difficulty", "hard", "--knob", "blur=9"], "blur=9.0")]:
        res = runner.invoke(app, [*args, "--overwrite", *bad])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1


def test_capacity_preset_is_easy_with_finer_cues(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", difficulty="capacity", **TINY)
    b = write_synthetic(tmp_path / "b", difficulty=get_difficulty("easy", ["min_cue_values=6"]), **TINY)
    assert _files(a.root) == _files(write_synthetic(tmp_path / "c", difficulty="capacity", **TINY).root)
    assert _images(a.root) == _images(b.root)  # the same pixels ...
    assert np.abs(_image_means(a.root) - np.array(EASY_TINY_MEANS)).max() > 1.0  # ... other cues than easy
    assert a.cue_values == 6 and json.loads((a.root / "graft_dataset.json").read_text())["difficulty"]["name"] == "capacity"
