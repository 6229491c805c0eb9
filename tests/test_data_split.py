"""The validation split: held-out training ids, disjoint from train and test, seeded, Market-1501-valid."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from graft_edge.config import get_preset
from graft_edge.data import build_train_loader, build_val_loaders, read_split, train_val_split
from graft_edge.data.split import held_out_ids, split_train_val, val_id_count
from graft_edge.errors import GraftError


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 ids (10 train x 3 cameras x 2 images), 16x32 slots."""
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("split") / "syn"
    write_synthetic(root, ids=20, cameras=3, images_per_camera=2, size=(16, 32), seed=0)
    return root


def _cfg(fraction: float = 0.2, seed: int = 0, distractors: int = 0):
    cfg = get_preset("synthetic")
    return replace(cfg, model=replace(cfg.model, img_size=(16, 32)),
                   data=replace(cfg.data, ids_per_batch=2, instances_per_id=2, val_fraction=fraction, val_seed=seed,
                                val_distractors=distractors))


@pytest.mark.parametrize("ids, fraction, count", [(10, 0.2, 2), (50, 0.2, 10), (4, 0.2, 1), (10, 0.0, 0), (3, 0.1, 1)])
def test_val_id_count(ids: int, fraction: float, count: int) -> None:
    assert val_id_count(ids, fraction) == count


def test_val_ids_disjoint_from_train_and_test_and_train_relabelled(data: Path) -> None:
    split = train_val_split(data, _cfg())
    train_pids = {s.pid for s in split.train}
    test_pids = {s.pid for s in read_split(data, "query")} | {s.pid for s in read_split(data, "gallery")}
    val_pids = {s.pid for s in split.val_query + split.val_gallery}
    assert len(split.val_ids) == 2 and val_pids == set(split.val_ids)
    assert not val_pids & train_pids and not val_pids & test_pids and len(train_pids) == 8
    assert sorted({s.label for s in split.train}) == list(range(8))  # the classifier is 8 wide
    assert len(split.train) + len(split.val_query) + len(split.val_gallery) == len(read_split(data, "train"))
    assert split.distractors == 0
    assert all(s.label == s.pid for s in split.val_query + split.val_gallery)
    _, _, n = build_train_loader(data, _cfg())
    assert n == 8


@pytest.mark.parametrize("per_id, expected", [(0, 0), (4, 4), (5, 5), (99, 6)])
def test_val_gallery_distractors_are_training_ids_spread_over_cameras(data: Path, per_id: int, expected: int) -> None:
    """Each training id adds min(per_id, its 6 images) distractors, round-robin over its 3 cameras; held-out ids,
    queries and the training split are unchanged, and no distractor can be a positive for a query."""
    plain, split = train_val_split(data, _cfg()), train_val_split(data, _cfg(distractors=per_id))
    assert (split.train, split.val_query, split.val_ids) == (plain.train, plain.val_query, plain.val_ids)
    own, extra = split.val_gallery[:len(plain.val_gallery)], split.val_gallery[len(plain.val_gallery):]
    assert own == plain.val_gallery and split.distractors == len(extra) == 8 * expected
    train_pids = {s.pid for s in read_split(data, "train")} - set(split.val_ids)
    assert {s.pid for s in extra} == (train_pids if expected else set()) and all(s.label == s.pid for s in extra)
    for pid in train_pids:
        cams = [s.camid for s in extra if s.pid == pid]
        assert len(cams) == expected and len(set(cams)) == min(expected, 3)  # spread before repeating a camera
    assert train_val_split(data, _cfg(distractors=per_id)) == split  # seeded
    loaders = build_val_loaders(data, _cfg(distractors=per_id), 0)
    assert len(loaders[1].dataset) == len(plain.val_gallery) + 8 * expected


def test_split_is_deterministic_and_follows_the_val_seed(data: Path) -> None:
    a, b = train_val_split(data, _cfg(seed=3)), train_val_split(data, _cfg(seed=3))
    assert a == b
    picks = {train_val_split(data, _cfg(seed=s)).val_ids for s in range(6)}
    assert len(picks) > 1  # the seed decides which ids are held out


def test_every_val_query_has_a_cross_camera_match(data: Path) -> None:
    split = train_val_split(data, _cfg(0.3))
    assert len(split.val_query) == 3 * 3  # one query per camera per held-out id (3 cameras, 2 images each)
    for q in split.val_query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in split.val_gallery)


def test_single_camera_ids_go_to_the_gallery_and_one_image_cameras_keep_a_match(data: Path) -> None:
    samples = read_split(data, "train")
    pid = samples[0].pid
    one_cam = [s for s in samples if s.pid != pid or s.camid == samples[0].camid]
    split = split_train_val(one_cam, 0.5, 0)
    if pid in split.val_ids:
        assert all(s.pid != pid for s in split.val_query)
    # an id with one image in each of two cameras: one query only (the other image is its match)
    two = [s for s in samples if s.pid == pid]
    two = [next(s for s in two if s.camid == c) for c in sorted({s.camid for s in two})[:2]]
    rest = [s for s in samples if s.pid != pid]
    for seed in range(8):
        split = split_train_val(two + rest, 0.5, seed)
        if pid in split.val_ids:
            assert len([s for s in split.val_query if s.pid == pid]) == 1
            assert len([s for s in split.val_gallery if s.pid == pid]) == 1


def test_val_loaders_and_disabled_split(data: Path) -> None:
    query, _ = build_val_loaders(data, _cfg(), num_workers=0)
    _, pids, _ = next(iter(query))
    assert set(np.unique(pids.numpy())) == set(train_val_split(data, _cfg()).val_ids)
    assert build_val_loaders(data, _cfg(0.0)) is None
    assert len(train_val_split(data, _cfg(0.0)).train) == len(read_split(data, "train"))


@pytest.mark.parametrize("fraction, needle", [(0.9, "at least 2 must stay"), (1.0, "expected a fraction"),
                                              (-0.1, "expected a fraction")])
def test_bad_fractions_are_one_clear_line(data: Path, fraction: float, needle: str) -> None:
    with pytest.raises(GraftError, match=needle):
        held_out_ids(range(10), fraction, 0)


def test_configs_written_before_the_split_keep_training_on_every_id() -> None:
    from graft_edge.config import config_from_dict, config_to_dict

    full = config_to_dict(get_preset("synthetic"))
    legacy = {**full, "data": {k: v for k, v in full["data"].items() if k not in ("val_fraction", "val_seed")}}
    assert config_from_dict(legacy).data.val_fraction == 0.0  # a checkpoint's classifier covers every train id
    assert config_from_dict(full).data.val_fraction == 0.2
    assert config_from_dict({"preset": "synthetic", "data": {"num_workers": 1}}).data.val_fraction == 0.2


def test_configs_written_before_distractors_keep_their_validation_gallery() -> None:
    from graft_edge.config import config_from_dict, config_to_dict

    full = config_to_dict(get_preset("synthetic"))
    older = {**full, "data": {k: v for k, v in full["data"].items() if k != "val_distractors"}}
    assert config_from_dict(older).data.val_distractors == 0  # their val numbers stay comparable
    assert config_from_dict(full).data.val_distractors == 16
    with pytest.raises(GraftError, match="data.val_distractors"):
        config_from_dict({**full, "data": {**full["data"], "val_distractors": -1}})
