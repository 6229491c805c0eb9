"""On-disk layouts (side by side, per-modality folders), ReidDataset and the loaders, on tiny fixtures."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from graft_edge.config import get_preset
from graft_edge.data import (
    ReidDataset,
    build_eval_loaders,
    build_train_loader,
    dataset_modalities,
    detect_layout,
    parse_name,
    read_split,
    relabel,
)
from graft_edge.errors import GraftError

SLOT_H, SLOT_W = 8, 16
COLOURS = {"rgb": (250, 0, 0), "nir": (0, 250, 0), "tir": (0, 0, 250)}
# (pid, cam, frame) per split: 3 ids x 2 cameras; a junk -1 image in the gallery
NAMES = {
    "bounding_box_train": [(p, c, f) for p in (7, 3, 12) for c in (1, 2) for f in (0, 1)],
    "query": [(20, 1, 0), (21, 2, 0)],
    "bounding_box_test": [(20, 2, 0), (21, 1, 0), (-1, 1, 0)],
}


def _name(pid: int, cam: int, frame: int) -> str:
    return f"{pid:04d}_c{cam:04d}_{frame:03d}.jpg" if pid >= 0 else f"-1_c{cam:04d}_{frame:03d}.jpg"


def _slot(modality: str) -> np.ndarray:
    return np.tile(np.array(COLOURS[modality], np.uint8), (SLOT_H, SLOT_W, 1))


def write_side_by_side(root: Path, modalities=("rgb", "nir", "tir"), meta: bool = False) -> Path:
    """ROOT/rgbir/<split>/*.jpg with the modalities as solid-colour slots."""
    for split, names in NAMES.items():
        folder = root / "rgbir" / split
        folder.mkdir(parents=True)
        for pid, cam, frame in names:
            pixels = np.concatenate([_slot(m) for m in modalities], axis=1)
            Image.fromarray(pixels).save(folder / _name(pid, cam, frame), quality=95)
    if meta:
        (root / "graft_dataset.json").write_text(json.dumps({"modalities": list(modalities), "layout": "side_by_side"}))
    return root


def write_per_modality(root: Path, dirs=("R", "N", "T")) -> Path:
    """ROOT/{R,N,T}/<split>/*.jpg with identical names."""
    for d, m in zip(dirs, ("rgb", "nir", "tir")):
        for split, names in NAMES.items():
            folder = root / d / split
            folder.mkdir(parents=True)
            for pid, cam, frame in names:
                Image.fromarray(_slot(m)).save(folder / _name(pid, cam, frame), quality=95)
    return root


@pytest.mark.parametrize("name, expected", [
    ("0539_c0001_009.jpg", (539, 1, 9)),
    ("-1_c0003_000.jpg", (-1, 3, 0)),
    ("0002_c004.jpg", (2, 4, 0)),
    ("/some/dir/0010_c0002_123.png", (10, 2, 123)),
])
def test_parse_name_good(name: str, expected: tuple[int, int, int]) -> None:
    assert parse_name(name) == expected


@pytest.mark.parametrize("name", ["foo.jpg", "0001_cX_001.jpg", "-_c-_000.jpg", "0001-c0001.jpg"])
def test_parse_name_bad(name: str) -> None:
    with pytest.raises(GraftError, match=name.split("/")[-1].replace(".", r"\.")):
        parse_name(name)


@pytest.mark.parametrize("mods", [("rgb", "nir", "tir"), ("rgb", "nir")])
def test_side_by_side_detected_from_geometry(tmp_path: Path, mods: tuple[str, ...]) -> None:
    root = write_side_by_side(tmp_path, mods)
    layout = detect_layout(root)
    assert layout.kind == "side_by_side" and layout.modalities == mods
    assert dataset_modalities(root) == mods


def test_side_by_side_metadata_names_slots(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path, ("nir", "tir"), meta=True)
    assert detect_layout(root).modalities == ("nir", "tir")
    sample = read_split(root, "train", ("tir",))[0]
    assert sample.source("tir").slot == 1 and sample.source("tir").num_slots == 2
    images, _, _ = ReidDataset([sample], ("tir",))[0]
    assert images["tir"][2].mean() > 0.9 and images["tir"][0].mean() < 0.1  # the blue (tir) slot


def test_geometry_without_metadata_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "rgbir" / "bounding_box_train"
    folder.mkdir(parents=True)
    Image.new("RGB", (50, 8)).save(folder / "0001_c0001_000.jpg")
    with pytest.raises(GraftError, match=r"0001_c0001_000\.jpg \(50x8\).*graft_dataset\.json"):
        detect_layout(tmp_path)


def test_read_split_relabels_train_and_keeps_pids_for_eval(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path)
    train = read_split(root, "train", ("rgb", "nir", "tir"))
    assert len(train) == 12
    assert {s.pid: s.label for s in train} == {3: 0, 7: 1, 12: 2}
    assert train[0].source("nir").slot == 1 and train[0].frame in (0, 1)
    gallery = read_split(root, "gallery", ("rgb",))
    assert [(s.pid, s.camid, s.label) for s in gallery] == [(20, 2, 20), (21, 1, 21)]  # junk -1 skipped
    assert gallery[0].modalities == ("rgb",)
    assert [s.label for s in relabel(gallery)] == [0, 1]


@pytest.mark.parametrize("dirs", [("R", "N", "T"), ("rgb", "nir", "tir"), ("RGB", "NI", "TI")])
def test_per_modality_layout(tmp_path: Path, dirs: tuple[str, str, str]) -> None:
    root = write_per_modality(tmp_path, dirs)
    layout = detect_layout(root)
    assert layout.kind == "per_modality" and layout.modalities == ("rgb", "nir", "tir")
    samples = read_split(root, "train", ("tir", "rgb"))
    assert len(samples) == 12 and samples[0].modalities == ("tir", "rgb")
    src = samples[0].source("tir")
    assert src.slot is None and src.path.parent == root / dirs[2] / "bounding_box_train"
    images, label, camid = ReidDataset(samples, ("rgb", "tir"))[0]
    assert images["rgb"].shape == (3, SLOT_H, SLOT_W) and images["rgb"][0].mean() > 0.9
    assert images["tir"][2].mean() > 0.9 and (label, camid) == (samples[0].label, samples[0].camid)


def test_per_modality_missing_file(tmp_path: Path) -> None:
    root = write_per_modality(tmp_path)
    (root / "N" / "query" / "0021_c0002_000.jpg").unlink()
    with pytest.raises(GraftError, match=r"N/query/0021_c0002_000\.jpg is missing"):
        read_split(root, "query", ("rgb", "nir"))
    assert len(read_split(root, "query", ("rgb", "tir"))) == 2  # NIR not requested: fine


def test_unknown_modality_lists_what_the_data_has(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path, ("rgb", "nir"))
    with pytest.raises(GraftError, match=r"'tir' is not in data root .* \(it has rgb,nir\)"):
        read_split(root, "train", ("rgb", "tir"))


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(GraftError, match=r"has no rgbir/bounding_box_train \(expected the RGBNT100 layout"):
        detect_layout(tmp_path)
    with pytest.raises(GraftError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    root = write_side_by_side(tmp_path / "d")
    (root / "rgbir" / "query").rename(root / "rgbir" / "queries")
    with pytest.raises(GraftError, match=r"has no rgbir/query"):
        read_split(root, "query")
    with pytest.raises(GraftError, match="unknown split 'val'"):
        read_split(root, "val")


def test_unparsable_name_in_split(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path)
    Image.new("RGB", (48, 8)).save(root / "rgbir" / "query" / "car.jpg")
    with pytest.raises(GraftError, match=r"'car\.jpg'"):
        read_split(root, "query")


def test_corrupt_image(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path)
    bad = root / "rgbir" / "query" / "0021_c0002_000.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated jpeg
    samples = read_split(root, "query")
    ds = ReidDataset(samples, ("rgb", "nir", "tir"))  # the first file is fine: construction passes
    with pytest.raises(GraftError, match=r"cannot read image .*0021_c0002_000\.jpg"):
        ds[1]
    with pytest.raises(GraftError, match=r"0021_c0002_000\.jpg"):
        ReidDataset(samples, ("rgb",), check="all")
    (root / "rgbir" / "query" / "0020_c0001_000.jpg").write_bytes(b"not an image")
    with pytest.raises(GraftError, match=r"cannot read image .*0020_c0001_000\.jpg"):
        ReidDataset(samples, ("rgb",))  # the first image is checked eagerly


def test_wrong_width_caught_before_training(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path, meta=True)
    first = sorted((root / "rgbir" / "bounding_box_train").iterdir())[0]
    Image.new("RGB", (50, 8)).save(first)
    samples = read_split(root, "train")
    with pytest.raises(GraftError, match=rf"{first.name} is 50x8: its width does not split into 3"):
        ReidDataset(samples, ("rgb", "nir", "tir"))


def test_slots_and_default_collate(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path)
    ds = ReidDataset(read_split(root, "train"), ("rgb", "nir", "tir"))
    images, labels, camids = next(iter(DataLoader(ds, batch_size=4)))
    assert set(images) == {"rgb", "nir", "tir"}
    for i, m in enumerate(("rgb", "nir", "tir")):
        assert images[m].shape == (4, 3, SLOT_H, SLOT_W)
        channel_means = images[m].mean(dim=(0, 2, 3))
        assert int(channel_means.argmax()) == i and channel_means.max() > 0.9  # each slot its own colour
    assert labels.shape == (4,) and camids.shape == (4,) and labels.dtype == torch.int64


def test_build_loaders(tmp_path: Path) -> None:
    root = write_side_by_side(tmp_path, ("rgb", "nir"))
    cfg = get_preset("synthetic")
    cfg = replace(cfg, model=replace(cfg.model, modalities=("rgb", "nir"), img_size=(16, 32)),
                  data=replace(cfg.data, ids_per_batch=2, instances_per_id=2, num_workers=0, val_fraction=0.0))
    loader, sampler, n = build_train_loader(root, cfg)
    assert n == 3 and len(loader) == len(sampler) == 3  # 6 chunks of K=2 / P=2
    images, labels, camids = next(iter(loader))
    assert set(images) == {"rgb", "nir"} and images["nir"].shape == (4, 3, 16, 32)
    assert labels.tolist()[0] == labels.tolist()[1] and len(set(labels.tolist())) == 2
    query, gallery = build_eval_loaders(root, cfg.model, batch_size=8)
    images, pids, camids = next(iter(gallery))
    assert pids.tolist() == [20, 21] and camids.tolist() == [2, 1] and images["rgb"].shape == (2, 3, 16, 32)
    bad = replace(cfg, data=replace(cfg.data, ids_per_batch=8))
    with pytest.raises(GraftError, match="training set has 3 ids but data.ids_per_batch=8 needs at least 8"):
        build_train_loader(root, bad)
