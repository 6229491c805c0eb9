"""Readers for the two on-disk ReID layouts: side-by-side (RGBNT100/RGBN300) and per-modality folders.

Side by side:  ROOT/rgbir/{bounding_box_train,query,bounding_box_test}/PID_cCAM_FRAME.jpg, each file
               one image holding the modalities as equal-width horizontal slots (RGB | NIR | TIR).
Per modality:  ROOT/{R,N,T}/{bounding_box_train,query,bounding_box_test}/ with identical names in
               every modality folder (also rgb/nir/tir and RGB/NI/TI).
A ROOT/graft_dataset.json {"modalities": [...], "layout": "side_by_side"} (written by the synthetic
generator) names the slots; without it the slot count comes from the image aspect (6:1 -> 3, 4:1 -> 2).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from graft_edge.config import MODALITIES
from graft_edge.data.images import image_size
from graft_edge.errors import GraftError

SPLITS: dict[str, str] = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
SIDE_BY_SIDE_DIR = "rgbir"
META_FILE = "graft_dataset.json"
SIDE_BY_SIDE = "side_by_side"
PER_MODALITY = "per_modality"
# folder names accepted for each modality in the per-modality layout, in lookup order
MODALITY_DIRS: dict[str, tuple[str, ...]] = {
    "rgb": ("R", "rgb", "RGB"),
    "nir": ("N", "nir", "NI"),
    "tir": ("T", "tir", "TI"),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_SLOTS: dict[int, tuple[str, ...]] = {3: ("rgb", "nir", "tir"), 2: ("rgb", "nir")}
SLOT_ASPECT = 2  # width / height of one modality slot in the public sets (256x128)
_NAME_RE = re.compile(r"([-\d]+)_c([-\d]+)(?:_(\d+))?")
_EXPECTED = (
    "expected the RGBNT100 layout ROOT/rgbir/{bounding_box_train,query,bounding_box_test} "
    "or per-modality folders ROOT/{R,N,T}/..."
)


@dataclass(frozen=True)
class Source:
    """Where one modality of a sample lives: a file and, in side-by-side files, which slot."""

    modality: str
    path: Path
    slot: int | None = None  # slot index in a side-by-side file; None: the whole file
    num_slots: int = 1  # how many equal-width slots the file holds


@dataclass(frozen=True)
class Sample:
    """One multimodal image: its per-modality sources, identity, camera and frame."""

    sources: tuple[Source, ...]  # one per requested modality, in request order
    pid: int  # identity as named on disk
    camid: int  # camera as named on disk (c0003 -> 3)
    frame: int  # frame number from the name, 0 when absent
    label: int = -1  # training label 0..N-1 (train split) or pid (query / gallery)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this sample carries, in order."""
        return tuple(s.modality for s in self.sources)

    def source(self, modality: str) -> Source:
        """The source of one modality; GraftError when the sample lacks it."""
        for s in self.sources:
            if s.modality == modality:
                return s
        raise GraftError(f"sample {self.sources[0].path.name} has no {modality!r} image (it has {','.join(self.modalities)})")


@dataclass(frozen=True)
class Layout:
    """A detected dataset root: which layout and which modalities it holds."""

    kind: str  # SIDE_BY_SIDE | PER_MODALITY
    root: Path
    modalities: tuple[str, ...]  # side by side: slot order; per modality: canonical order
    dirs: tuple[Path, ...]  # side by side: (ROOT/rgbir,); per modality: one folder per modality

    def modality_dir(self, modality: str) -> Path:
        """The folder holding `modality` (side by side: the shared rgbir folder)."""
        if self.kind == SIDE_BY_SIDE:
            return self.dirs[0]
        return self.dirs[self.modalities.index(modality)]


def parse_name(name: str) -> tuple[int, int, int]:
    """'0539_c0001_009.jpg' -> (539, 1, 9): pid, camera, frame (0 when the name has none)."""
    stem = Path(name).name.rsplit(".", 1)[0]
    match = _NAME_RE.search(stem)
    try:
        if match is None:
            raise ValueError
        frame = int(match.group(3)) if match.group(3) else 0
        return int(match.group(1)), int(match.group(2)), frame
    except ValueError:
        raise GraftError(
            f"cannot parse identity/camera from file name {name!r}: expected PID_cCAM_FRAME.jpg, e.g. 0539_c0001_009.jpg"
        ) from None


def _read_meta(root: Path) -> dict | None:
    """ROOT/graft_dataset.json as a dict, or None when absent; GraftError when malformed."""
    path = root / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        mods = meta["modalities"]
        if not isinstance(mods, list) or not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(f"modalities {mods!r} must be distinct names from {','.join(MODALITIES)}")
        if meta.get("layout", SIDE_BY_SIDE) != SIDE_BY_SIDE:
            raise ValueError(f"layout {meta.get('layout')!r} is not {SIDE_BY_SIDE!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GraftError(f"{path} is not a valid dataset description ({exc}); expected {{\"modalities\": [...], \"layout\": \"side_by_side\"}}") from None
    return meta


def _image_files(folder: Path) -> list[Path]:
    """Image files of one split folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _slots_from_geometry(folder: Path) -> tuple[str, ...]:
    """Slot modalities of a side-by-side folder without metadata, from its first image's aspect."""
    files = _image_files(folder)
    if not files:
        raise GraftError(f"{folder} holds no images ({'/'.join(IMAGE_SUFFIXES)})")
    width, height = image_size(files[0])
    slots = width // (SLOT_ASPECT * height) if height and width % (SLOT_ASPECT * height) == 0 else 0
    if slots not in DEFAULT_SLOTS:
        raise GraftError(
            f"cannot tell the modalities of {files[0]} ({width}x{height}): expected 768x128-like "
            f"(RGB|NIR|TIR) or 512x128-like (RGB|NIR) side-by-side images, or a {folder.parent / META_FILE} "
            '{"modalities": [...], "layout": "side_by_side"} naming the slots'
        )
    return DEFAULT_SLOTS[slots]


def _find_modality_dirs(root: Path) -> dict[str, Path]:
    """modality -> folder for every per-modality folder present under root."""
    found: dict[str, Path] = {}
    for modality, names in MODALITY_DIRS.items():
        for name in names:
            if (root / name / SPLITS["train"]).is_dir() or (root / name / SPLITS["query"]).is_dir():
                found[modality] = root / name
                break
    return found


def detect_layout(root: str | Path) -> Layout:
    """Which of the two layouts `root` uses and which modalities it holds; GraftError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise GraftError(f"data root {root} does not exist or is not a folder ({_EXPECTED})")
    side = root / SIDE_BY_SIDE_DIR
    if side.is_dir():
        train = side / SPLITS["train"]
        if not train.is_dir():
            raise GraftError(f"data root {root} has no {SIDE_BY_SIDE_DIR}/{SPLITS['train']} ({_EXPECTED})")
        meta = _read_meta(root)
        mods = tuple(meta["modalities"]) if meta else _slots_from_geometry(train)
        return Layout(SIDE_BY_SIDE, root, mods, (side,))
    found = _find_modality_dirs(root)
    if not found:
        raise GraftError(f"data root {root} has no {SIDE_BY_SIDE_DIR}/{SPLITS['train']} ({_EXPECTED})")
    mods = tuple(m for m in MODALITIES if m in found)
    return Layout(PER_MODALITY, root, mods, tuple(found[m] for m in mods))


def _check_modalities(layout: Layout, modalities: Sequence[str]) -> tuple[str, ...]:
    """The requested modalities, checked against what the dataset holds."""
    mods = tuple(modalities)
    if not mods:
        raise GraftError("no modality requested: expected some of " + ",".join(layout.modalities))
    for m in mods:
        if m not in layout.modalities:
            raise GraftError(
                f"modality {m!r} is not in data root {layout.root} (it has {','.join(layout.modalities)}); "
                "set model.modalities to a subset of those"
            )
    return mods


def _split_dir(layout: Layout, modality: str, split: str) -> Path:
    """The folder of one split for one modality; GraftError naming it when missing."""
    if split not in SPLITS:
        raise GraftError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    folder = layout.modality_dir(modality) / SPLITS[split]
    if not folder.is_dir():
        rel = folder.relative_to(layout.root) if folder.is_relative_to(layout.root) else folder
        raise GraftError(f"data root {layout.root} has no {rel} ({_EXPECTED})")
    return folder


def _side_by_side_samples(layout: Layout, split: str, mods: tuple[str, ...]) -> list[Sample]:
    """Samples of a side-by-side split: every modality points into the same file."""
    folder = _split_dir(layout, mods[0], split)
    n = len(layout.modalities)
    out = []
    for path in _image_files(folder):
        pid, camid, frame = parse_name(path.name)
        sources = tuple(Source(m, path, layout.modalities.index(m), n) for m in mods)
        out.append(Sample(sources, pid, camid, frame))
    return out


def _per_modality_samples(layout: Layout, split: str, mods: tuple[str, ...]) -> list[Sample]:
    """Samples of a per-modality split; every name must exist in every requested modality folder."""
    folders = [_split_dir(layout, m, split) for m in mods]
    names = [{p.name for p in _image_files(f)} for f in folders]
    union = sorted(set().union(*names))
    for folder, have in zip(folders, names):
        missing = [n for n in union if n not in have]
        if missing:
            other = next(f for f, h in zip(folders, names) if missing[0] in h)
            raise GraftError(
                f"{folder / missing[0]} is missing ({len(missing)} file(s) in {other} have no counterpart in {folder}); "
                "per-modality folders must hold identical file names"
            )
    out = []
    for name in union:
        pid, camid, frame = parse_name(name)
        out.append(Sample(tuple(Source(m, f / name) for m, f in zip(mods, folders)), pid, camid, frame))
    return out


def relabel(samples: Iterable[Sample]) -> list[Sample]:
    """Training labels 0..N-1 in sorted pid order (the classifier's targets)."""
    samples = list(samples)
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [replace(s, label=mapping[s.pid]) for s in samples]


def read_split(root: str | Path, split: str, modalities: Sequence[str] | None = None) -> list[Sample]:
    """Samples of one split (train|query|gallery); junk pid -1 skipped; train relabelled 0..N-1."""
    layout = detect_layout(root)
    mods = _check_modalities(layout, layout.modalities if modalities is None else modalities)
    read = _side_by_side_samples if layout.kind == SIDE_BY_SIDE else _per_modality_samples
    samples = [s for s in read(layout, split, mods) if s.pid != -1]
    if split == "train":
        return relabel(samples)
    return [replace(s, label=s.pid) for s in samples]


def dataset_fingerprint(root: str | Path) -> str:
    """SHA-256 of a dataset's image files (paths relative to `root`, and sizes) and its description file: what a
    resumed run compares to tell the same data (copied or moved, too) from another or a regenerated set."""
    root = Path(root)
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
            elif name == META_FILE and path.parent == root:
                h.update(path.read_bytes())
    return h.hexdigest()


def num_ids(samples: Iterable[Sample]) -> int:
    """How many distinct identities the samples hold."""
    return len({s.pid for s in samples})
