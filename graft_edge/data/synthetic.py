"""A synthetic multimodal vehicle ReID set, written in the exact RGBNT100 side-by-side layout.

Fusion matters by construction: every identity is a combination of one cue per modality
(RGB body colour, NIR reflective pattern, TIR heat signature; see render.py), each cue taking
only a few values, so a single modality can at best tell the cue groups apart while the
combination is unique. Half the ids train, half test (query: one image from each of half the
cameras; gallery: the rest). Same seed -> same bytes; the reader is the real RGBNT100 reader.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from graft_edge.config import MODALITIES, parse_modalities
from graft_edge.data import difficulty as nuisance
from graft_edge.data import render
from graft_edge.data.difficulty import Difficulty
from graft_edge.data.layouts import META_FILE, SIDE_BY_SIDE, SIDE_BY_SIDE_DIR, SPLITS
from graft_edge.errors import GraftError
from graft_edge.fileio import write_json
from graft_edge.outdir import OutputLock, clean_stale_temps, existing, is_empty

GENERATOR_VERSION = 1
JPEG_QUALITY = 95


@dataclass(frozen=True)
class IdentityCues:
    """One synthetic identity: its pid, split and cue value per modality."""

    pid: int
    split: str  # "train" | "test"
    cues: tuple[int, ...]  # one value per modality, in the set's modality order


@dataclass(frozen=True)
class SyntheticSummary:
    """What write_synthetic wrote."""

    root: Path
    modalities: tuple[str, ...]
    counts: Mapping[str, int]  # images per split: train, query, gallery
    train_ids: int
    test_ids: int
    cameras: int
    cue_values: int  # values per modality cue
    identities: tuple[IdentityCues, ...]
    seconds: float
    difficulty: Difficulty = Difficulty()

    def line(self) -> str:
        """One-line human summary."""
        c = self.counts
        return (
            f"wrote {self.root}: {c['train']} train / {c['query']} query / {c['gallery']} gallery images, "
            f"{self.train_ids} train + {self.test_ids} test ids, {self.cameras} cameras, "
            f"modalities {','.join(self.modalities)} ({self.cue_values} values per cue), difficulty "
            f"{self.difficulty.name} in {self.seconds:.1f} s"
        )


def cue_values_for(ids: int, num_modalities: int, minimum: int = 4) -> int:
    """Fewest values per cue (at least `minimum`) that give every identity its own combination."""
    k = max(int(minimum), math.ceil(ids ** (1.0 / num_modalities) - 1e-9))
    if k > render.MAX_CUE_VALUES:
        raise GraftError(
            f"ids={ids} needs {k} values per cue with {num_modalities} modalit{'y' if num_modalities == 1 else 'ies'} "
            f"(at most {render.MAX_CUE_VALUES}): use fewer ids or more modalities"
        )
    return k


def assign_identities(ids: int, modalities: Sequence[str], seed: int,
                      min_values: int = 4) -> tuple[list[IdentityCues], int]:
    """Give each pid 1..ids a distinct cue combination; the first half train, the rest test."""
    k = cue_values_for(ids, len(modalities), min_values)
    rng = np.random.default_rng([seed, 7])
    combos = rng.choice(k ** len(modalities), size=ids, replace=False)
    n_train = ids // 2
    out = []
    for i, code in enumerate(combos):
        digits = tuple(int(code) // k**j % k for j in range(len(modalities)))
        out.append(IdentityCues(pid=i + 1, split="train" if i < n_train else "test", cues=digits))
    return out, k


def _check_args(ids: int, cameras: int, images_per_camera: int, size: tuple[int, int]) -> None:
    """Reject sizes the generator cannot honour, naming the option."""
    if ids < 2:
        raise GraftError(f"ids={ids}: need at least 2 (one train and one test identity)")
    if cameras < 2:
        raise GraftError(f"cameras={cameras}: need at least 2 (a query must have gallery matches in another camera)")
    if images_per_camera < 1:
        raise GraftError(f"images_per_camera={images_per_camera}: need at least 1")
    if len(size) != 2 or min(size) < 16:
        raise GraftError(f"size={tuple(size)}: expected (H, W) per modality, each at least 16 pixels")
    if ids > 9999 or cameras > 9999:
        raise GraftError("ids and cameras must be below 10000 (4-digit file names)")


def _night_cameras(cameras: int, rng: np.random.Generator) -> set[int]:
    """About a quarter of the cameras (at least one when there are 4+) film at night."""
    n = cameras // 4
    return {int(c) + 1 for c in rng.choice(cameras, size=n, replace=False)} if n else set()


def render_image(
    ident: IdentityCues, modalities: Sequence[str], cam: render.Camera, values: int,
    size: tuple[int, int], key: Sequence[int], diff: Difficulty = Difficulty(),
    cam_nuisance: nuisance.CameraNuisance | None = None,
) -> np.ndarray:
    """One side-by-side image (H, W * M, 3) uint8; slots are identical whatever the modality subset.

    The difficulty's per-image knobs draw from their own stream ([*key, 17]); with every knob off the
    pixels are the original generator's."""
    H, W = size
    rng_pose = np.random.default_rng([*key, 0])
    pose = render.make_pose(rng_pose, cam, size)
    rng_hard = np.random.default_rng([*key, 17])
    if diff.jitter > 0:
        scale, dx, dy = nuisance.jitter_offsets(diff, rng_hard)
        pose = replace(pose, su=pose.su * scale, sv=pose.sv * scale, cx=pose.cx + dx * W, cy=pose.cy + dy * H)
    margin = (cam.backgrounds["tir"].shape[0] - H) // 2
    offset = (int(rng_pose.integers(0, 2 * margin + 1)), int(rng_pose.integers(0, 2 * margin + 1)))
    parts = render.Parts(pose, size)
    views: dict[str, np.ndarray] = {}
    for m, value in zip(modalities, ident.cues):
        rng = np.random.default_rng([*key, 1 + MODALITIES.index(m)])
        bg = render.background(cam, m, offset, size)
        if m == "rgb":
            views[m] = render.render_rgb(parts, cam, rng, render.body_colour(value, values), bg)
        elif m == "nir":
            views[m] = render.render_nir(parts, cam, rng, value, bg)
        else:
            views[m] = render.render_tir(parts, cam, rng, value, bg)
    render.add_occluder(views, rng_pose, W)
    nuisance.add_partial_occluder(views, diff, rng_hard)
    if cam_nuisance is not None:
        nuisance.apply_camera(views, cam_nuisance, rng_hard)
    nuisance.degrade_one(views, diff, rng_hard)
    return np.concatenate([render.to_uint8(views[m]) for m in modalities], axis=1)


def _plan(
    identities: Sequence[IdentityCues], cameras: int, images_per_camera: int, seed: int
) -> list[tuple[IdentityCues, int, int, str]]:
    """(identity, camera, frame, split folder) for every image, query picks drawn per test id."""
    rng = np.random.default_rng([seed, 11])
    plan = []
    for ident in identities:
        query = set()
        if ident.split == "test":
            for cam in rng.choice(cameras, size=max(1, cameras // 2), replace=False):
                query.add((int(cam) + 1, int(rng.integers(images_per_camera))))
        for cam in range(1, cameras + 1):
            for j in range(images_per_camera):
                frame = (cam - 1) * images_per_camera + j
                split = "train" if ident.split == "train" else ("query" if (cam, j) in query else "gallery")
                plan.append((ident, cam, frame, split))
    return plan


SYNTH_OWNS = (META_FILE, SIDE_BY_SIDE_DIR)  # what --overwrite may replace; anything else in --out is kept
TEMP_PATTERNS = (".synth-tmp-*", ".synth-old-*")


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """Check the destination (lock held) and return a fresh temp folder inside it."""
    clean_stale_temps(out, TEMP_PATTERNS)
    if not is_empty(out) and not overwrite:
        raise GraftError(f"output folder {out} is not empty: pass --overwrite to replace a synthetic set written there")
    if overwrite and (out / SIDE_BY_SIDE_DIR).exists() and not _is_synthetic(out):
        raise GraftError(f"--overwrite: {out / SIDE_BY_SIDE_DIR} was not written by `synth` (no synthetic {META_FILE} "
                         "beside it); refusing to delete it, choose another --out")
    try:
        return Path(tempfile.mkdtemp(prefix=".synth-tmp-", dir=out))
    except OSError as exc:
        raise GraftError(f"cannot write {out}: {exc.strerror or exc}") from None


def _is_synthetic(out: Path) -> bool:
    """True when out/graft_dataset.json names this generator."""
    try:
        return json.loads((out / META_FILE).read_text()).get("generator") == __name__
    except (OSError, ValueError, AttributeError):
        return False


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished set into `out`, replacing only the entries a synthetic set owns."""
    old = Path(tempfile.mkdtemp(prefix=".synth-old-", dir=out))
    for path in existing(out, SYNTH_OWNS):
        path.rename(old / path.name)
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == META_FILE):  # the metadata last
        entry.rename(out / entry.name)
    tmp.rmdir()
    shutil.rmtree(old, ignore_errors=True)


def _metadata(
    modalities: Sequence[str], identities: Sequence[IdentityCues], values: int, seed: int,
    cameras: int, images_per_camera: int, size: tuple[int, int], night: set[int], counts: Mapping[str, int],
    diff: Difficulty, cam_nuisance: Mapping[int, nuisance.CameraNuisance],
) -> dict:
    """graft_dataset.json: names the slots (what the reader needs) and records the cue table."""
    return {
        "modalities": list(modalities),
        "layout": SIDE_BY_SIDE,
        "generator": "graft_edge.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "cameras": cameras,
        "night_cameras": sorted(night),
        "images_per_camera": images_per_camera,
        "size_hw": list(size),
        "counts": dict(counts),
        "cue_values": values,
        "cue_names": {m: [render.cue_name(m, v, values) for v in range(values)] for m in modalities},
        "identities": [{"pid": i.pid, "split": i.split, "cues": dict(zip(modalities, i.cues))} for i in identities],
        "difficulty": diff.record(),
        "camera_nuisance": {str(c): {"gains": dict(n.gains), "hue_degrees": round(n.hue_degrees, 3),
                                     "blur_sigma": round(n.blur_sigma, 3), "noise_sigma": round(n.noise_sigma, 4)}
                            for c, n in cam_nuisance.items()},
    }


def write_synthetic(
    out: str | Path,
    ids: int = 64,
    cameras: int = 8,
    modalities: Sequence[str] | str = MODALITIES,
    seed: int = 0,
    images_per_camera: int = 3,
    size: tuple[int, int] = (64, 128),
    overwrite: bool = False,
    difficulty: Difficulty | str = "easy",
) -> SyntheticSummary:
    """Write the synthetic set to `out` (built in a temp folder, renamed at the end) and summarise it.

    `difficulty`: a preset name of graft_edge.data.difficulty.PRESETS or a Difficulty ("easy": the original set)."""
    start = time.perf_counter()
    mods = parse_modalities(modalities)
    size = (int(size[0]), int(size[1]))
    _check_args(ids, cameras, images_per_camera, size)
    diff = nuisance.get_difficulty(difficulty) if isinstance(difficulty, str) else difficulty.validated()
    identities, values = assign_identities(ids, mods, seed, int(diff.min_cue_values))
    out = Path(out)
    rng_cam = np.random.default_rng([seed, 5])
    night = _night_cameras(cameras, rng_cam)
    margin = max(2, size[0] // 8)
    cams = {c: render.make_camera(np.random.default_rng([seed, 5, c]), size, c in night, margin) for c in range(1, cameras + 1)}
    cam_nuisance = {c: nuisance.camera_nuisance(diff, np.random.default_rng([seed, 5, c, 17]), mods)
                    for c in range(1, cameras + 1)}
    if out.exists() and not out.is_dir():
        raise GraftError(f"output {out} exists and is not a folder")
    with OutputLock(out, "synth"):
        counts = _write_all(out, overwrite, mods, identities, values, seed, cameras, images_per_camera, size, night,
                            cams, diff, cam_nuisance)
    n_train = sum(i.split == "train" for i in identities)
    return SyntheticSummary(
        root=out, modalities=mods, counts=counts, train_ids=n_train, test_ids=ids - n_train,
        cameras=cameras, cue_values=values, identities=tuple(identities), seconds=time.perf_counter() - start,
        difficulty=diff,
    )


def _write_all(out: Path, overwrite: bool, mods: tuple[str, ...], identities: list[IdentityCues], values: int,
               seed: int, cameras: int, images_per_camera: int, size: tuple[int, int], night: set[int],
               cams: Mapping[int, Any], diff: Difficulty,
               cam_nuisance: Mapping[int, nuisance.CameraNuisance]) -> dict[str, int]:
    """Render every image into a temp folder inside `out`, then move the set into place; returns counts."""
    tmp = _prepare_out(out, overwrite)
    try:
        folders = {s: tmp / SIDE_BY_SIDE_DIR / d for s, d in SPLITS.items()}
        for folder in folders.values():
            folder.mkdir(parents=True)
        counts = {s: 0 for s in SPLITS}
        for ident, cam, frame, split in _plan(identities, cameras, images_per_camera, seed):
            pixels = render_image(ident, mods, cams[cam], values, size, (seed, ident.pid, cam, frame), diff,
                                  cam_nuisance[cam])
            name = f"{ident.pid:04d}_c{cam:04d}_{frame:03d}.jpg"
            Image.fromarray(pixels).save(folders[split] / name, quality=JPEG_QUALITY)
            counts[split] += 1
        write_json(tmp / META_FILE, _metadata(mods, identities, values, seed, cameras, images_per_camera, size, night,
                                              counts, diff, cam_nuisance))
        _commit(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise GraftError(f"cannot write the synthetic set to {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
