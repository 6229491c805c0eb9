"""Synthetic set: determinism, the real reader reads it, cue design (fusion matters), atomic writes, the CLI."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft_edge.data import ReidDataset, detect_layout, read_split
from graft_edge.data.synthetic import assign_identities, cue_values_for, write_synthetic
from graft_edge.errors import GraftError

TINY = dict(ids=6, cameras=2, images_per_camera=2, size=(32, 64))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _files(write_synthetic(tmp_path / "a", seed=3, **TINY).root)
    b = _files(write_synthetic(tmp_path / "b", seed=3, **TINY).root)
    c = _files(write_synthetic(tmp_path / "c", seed=4, **TINY).root)
    assert a == b
    pixels_a = {Path(k).name: v for k, v in a.items() if k.endswith(".jpg")}
    pixels_c = {Path(k).name: v for k, v in c.items() if k.endswith(".jpg")}
    assert set(pixels_a) == set(pixels_c)  # same names (query picks may differ), other pixels
    assert all(pixels_a[k] != pixels_c[k] for k in pixels_a)


def test_layout_counts_and_reader(tmp_path: Path) -> None:
    s = write_synthetic(tmp_path / "d", **TINY)
    assert dict(s.counts) == {"train": 12, "query": 3, "gallery": 9} and (s.train_ids, s.test_ids) == (3, 3)
    assert "12 train / 3 query / 9 gallery" in s.line()
    layout = detect_layout(s.root)
    assert layout.kind == "side_by_side" and layout.modalities == ("rgb", "nir", "tir")
    train, query, gallery = (read_split(s.root, x) for x in ("train", "query", "gallery"))
    assert len(train) == 12 and sorted({x.label for x in train}) == [0, 1, 2]
    assert {x.pid for x in query} == {x.pid for x in gallery} == {4, 5, 6}
    assert not {x.source("rgb").path.name for x in query} & {x.source("rgb").path.name for x in gallery}
    for x in query:  # every query has a gallery match in another camera
        assert any(g.pid == x.pid and g.camid != x.camid for g in gallery)
    images, label, camid = ReidDataset(train, ("rgb", "nir", "tir"), check="all")[0]
    assert {m: tuple(t.shape) for m, t in images.items()} == {m: (3, 32, 64) for m in ("rgb", "nir", "tir")}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left


def test_views_never_identical(tmp_path: Path) -> None:
    s = write_synthetic(tmp_path / "d", **TINY)
    ds = ReidDataset(read_split(s.root, "train"), ("rgb", "nir", "tir"))
    same_id = [i for i, x in enumerate(ds.samples) if x.pid == 1]
    a, b = ds[same_id[0]][0], ds[same_id[1]][0]  # same id, same camera, two frames
    for m in a:
        assert (a[m] - b[m]).abs().mean() > 0.01
    nir, tir = a["nir"], a["tir"]
    assert (nir - tir).abs().mean() > 0.02 and (a["rgb"] - nir).abs().mean() > 0.02


def test_modality_subset_writes_only_those_slots(tmp_path: Path) -> None:
    s = write_synthetic(tmp_path / "d", modalities="tir,rgb", **TINY)
    assert s.modalities == ("rgb", "tir")
    meta = json.loads((s.root / "graft_dataset.json").read_text())
    assert meta["modalities"] == ["rgb", "tir"] and meta["layout"] == "side_by_side"
    from PIL import Image

    first = next((s.root / "rgbir" / "bounding_box_train").iterdir())
    assert Image.open(first).size == (2 * 64, 32)
    with pytest.raises(GraftError, match="'nir' is not in data root"):
        read_split(s.root, "train", ("nir",))


def test_cues_shared_by_groups_combinations_unique() -> None:
    mods = ("rgb", "nir", "tir")
    identities, k = assign_identities(64, mods, seed=0)
    assert k == 4 and len({i.cues for i in identities}) == 64  # every combination distinct
    for split in ("train", "test"):
        group = [i for i in identities if i.split == split]
        assert len(group) == 32
        for j in range(3):  # each single-modality cue value is shared by several ids of the split
            counts = Counter(i.cues[j] for i in group)
            assert len(counts) == 4 and min(counts.values()) >= 4
    pairs = Counter((i.cues[0], i.cues[1]) for i in identities)  # even two modalities are ambiguous
    assert max(pairs.values()) > 1
    assert cue_values_for(64, 2) == 8 and cue_values_for(100, 3) == 5
    with pytest.raises(GraftError, match="ids=100 needs 100 values per cue with 1 modality"):
        cue_values_for(100, 1)


def test_metadata_records_cue_table(tmp_path: Path) -> None:
    s = write_synthetic(tmp_path / "d", **TINY)
    meta = json.loads((s.root / "graft_dataset.json").read_text())
    assert meta["cue_names"]["nir"] == ["band", "bars", "checker", "plates"]
    assert [tuple(x["cues"].values()) for x in meta["identities"]] == [i.cues for i in s.identities]
    assert meta["counts"] == dict(s.counts)


def test_overwrite_rules(tmp_path: Path) -> None:
    out = tmp_path / "d"
    write_synthetic(out, seed=1, **TINY)
    with pytest.raises(GraftError, match="is not empty: pass --overwrite"):
        write_synthetic(out, **TINY)
    write_synthetic(out, seed=2, overwrite=True, **TINY)
    assert json.loads((out / "graft_dataset.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(GraftError, match="cameras=1"):
        write_synthetic(tmp_path / "e", ids=4, cameras=1)
    assert not (tmp_path / "e").exists()


def test_cli_synth(tmp_path: Path) -> None:
    from graft_edge.cli.main import app

    runner = CliRunner()
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--ids", "4", "--cameras", "2", "--images-per-camera", "1", "--height", "16", "--width", "32"]
    res = runner.invoke(app, [*args, "--modalities", "rgb,nir"])
    assert res.exit_code == 0, res.output
    assert "4 train / 2 query / 2 gallery" in res.output and "2 train + 2 test ids" in res.output
    assert detect_layout(out).modalities == ("rgb", "nir")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "not empty" in res.output
    res = runner.invoke(app, [*args, "--overwrite", "--modalities", "rgb,foo"])
    assert res.exit_code == 2 and "unknown modality 'foo'" in res.output
    res = runner.invoke(app, [*args, "--overwrite", "--seed", "5"])
    assert res.exit_code == 0 and detect_layout(out).modalities == ("rgb", "nir", "tir")
