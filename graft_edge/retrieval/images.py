"""Which images an index embeds: a dataset split (either layout) or a folder of loose files.

Loose files hold the model's modalities side by side, in the order a graft_dataset.json beside them
(or up to two folders above) names, else by their aspect (6:1 -> rgb|nir|tir, 4:1 -> rgb|nir); a
single-modality model also takes plain images. Identity and camera come from PID_cCAM_FRAME names
when present, else -1 (unknown).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft_edge.data.dataset import image_size
from graft_edge.data.layouts import (
    DEFAULT_SLOTS,
    IMAGE_SUFFIXES,
    META_FILE,
    SLOT_ASPECT,
    Sample,
    Source,
    parse_name,
    read_split,
)
from graft_edge.errors import GraftError


def _loose_files(folder: Path) -> list[Path]:
    """Image files directly inside folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _slot_modalities(folder: Path, first: Path, wanted: Sequence[str]) -> tuple[str, ...] | None:
    """The slot order of loose side-by-side files; None when each file is one plain image."""
    for parent in (folder, folder.parent, folder.parent.parent):
        meta = parent / META_FILE
        if meta.is_file():
            try:
                return tuple(json.loads(meta.read_text())["modalities"])
            except (OSError, ValueError, KeyError, TypeError):
                raise GraftError(f"{meta} is not a valid dataset description "
                                 '(expected {"modalities": [...]})') from None
    width, height = image_size(first)
    slots = width // (SLOT_ASPECT * height) if height and width % (SLOT_ASPECT * height) == 0 else 0
    if slots in DEFAULT_SLOTS:
        return DEFAULT_SLOTS[slots]
    if len(wanted) == 1:
        return None
    raise GraftError(f"cannot tell the modalities of {first} ({width}x{height}): expected side-by-side images "
                     f"(768x128-like rgb|nir|tir or 512x128-like rgb|nir) or a {META_FILE} beside them")


def _loose_samples(folder: Path, files: list[Path], modalities: Sequence[str]) -> list[Sample]:
    """One sample per loose file, with ids/cameras from the names where they parse."""
    slots = _slot_modalities(folder, files[0], modalities)
    missing = [m for m in modalities if slots is not None and m not in slots]
    if missing:
        raise GraftError(f"images in {folder} hold {','.join(slots or ())}, but the model needs {missing[0]!r}")
    out = []
    for path in files:
        try:
            pid, camid, frame = parse_name(path.name)
        except GraftError:
            pid, camid, frame = -1, -1, 0
        path = path.resolve()
        sources = tuple(Source(m, path) if slots is None else Source(m, path, slots.index(m), len(slots))
                        for m in modalities)
        out.append(Sample(sources, pid, camid, frame, label=pid))
    return out


def find_images(path: str | Path, modalities: Sequence[str], split: str) -> list[Sample]:
    """Samples to embed from a folder of images, or from `split` of a dataset root; GraftError when none."""
    path = Path(path)
    if not path.is_dir():
        raise GraftError(f"images {path} is not a folder (expected a dataset root or a folder of image files)")
    files = _loose_files(path)
    if files:
        samples = _loose_samples(path, files, modalities)
    else:
        samples = [Sample(tuple(Source(s.modality, s.path.resolve(), s.slot, s.num_slots) for s in smp.sources),
                          smp.pid, smp.camid, smp.frame, smp.label) for smp in read_split(path, split, modalities)]
    if not samples:
        raise GraftError(f"no images found in {path} (split {split})")
    return samples


def sample_to_json(sample: Sample) -> dict[str, Any]:
    """A sample as plain JSON (absolute paths) for the index's plan files."""
    return {"sources": [[s.modality, str(s.path), s.slot, s.num_slots] for s in sample.sources],
            "pid": sample.pid, "camid": sample.camid, "frame": sample.frame}


def sample_from_json(d: dict[str, Any]) -> Sample:
    """Inverse of sample_to_json."""
    sources = tuple(Source(m, Path(p), slot, n) for m, p, slot, n in d["sources"])
    return Sample(sources, int(d["pid"]), int(d["camid"]), int(d["frame"]), label=int(d["pid"]))


def sample_key(sample: Sample) -> str:
    """What identifies an indexed image: its first file and slot."""
    src = sample.sources[0]
    return f"{src.path}#{src.slot}"
