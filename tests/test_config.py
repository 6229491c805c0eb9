"""Config presets, YAML/dict bridge, --set overrides and unit parsing."""
from __future__ import annotations

import pytest

from graft_edge.config import PRESETS, apply_overrides, config_from_dict, config_to_dict, get_preset, parse_modalities
from graft_edge.errors import GraftError
from graft_edge.units import format_count, parse_count, parse_int_list, parse_size


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_dicts(name: str) -> None:
    cfg = get_preset(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_preset_modalities() -> None:
    assert get_preset("rgbnt100").model.modalities == ("rgb", "nir", "tir")
    assert get_preset("rgbn300").model.modalities == ("rgb", "nir")
    assert get_preset("synthetic").model.pretrained is False
    with pytest.raises(GraftError, match="unknown preset 'nope'.*rgbnt100"):
        get_preset("nope")


def test_overrides_are_typed() -> None:
    cfg = apply_overrides(get_preset("synthetic"), ["train.stage1.epochs=3", "model.modalities=[rgb, tir]",
                                                    "train.stage1.loss.combo=FFF", "train.stage2.lr=1e-5"])
    assert cfg.train.stage1.epochs == 3 and cfg.model.modalities == ("rgb", "tir")
    assert cfg.train.stage1.loss.combo == "FFF" and cfg.train.stage2.lr == 1e-5
    assert apply_overrides(cfg, ["model.modalities=nir"]).model.modalities == ("nir",)


@pytest.mark.parametrize("bad, match", [
    (["train.stage1.epoch=3"], "unknown config key 'train.stage1.epoch'"),
    (["train.stage1.epochs=three"], "expected an integer"),
    (["model.fusion=late"], "model.fusion='late'"),
    (["model.modalities=[rgb, xray]"], "unknown modality 'xray'"),
    (["novalue"], "expected KEY=VALUE"),
    (["train.stage1.loss.combo=FXD"], "FXD"),
    (["train.stage1.epochs=true"], "expected an integer, got True"),
    (["data.eval_batch_size=9223372036854775808"], "of at most 9223372036854775807 in size"),
    (["train.stage2.weight_decay=yes"], "expected a number, got True"),
])
def test_bad_overrides(bad, match) -> None:
    with pytest.raises(GraftError, match=match):
        apply_overrides(get_preset("synthetic"), bad)


def test_parse_modalities_canonical_order() -> None:
    assert parse_modalities("tir,rgb") == ("rgb", "tir")
    with pytest.raises(GraftError, match="twice"):
        parse_modalities("rgb,rgb")


@pytest.mark.parametrize("text, value", [("60M", 60_000_000), ("60000000", 60_000_000), ("1.5B", 1_500_000_000),
                                         ("500K", 500_000), ("0.5m", 500_000), ("12", 12)])
def test_parse_count(text, value) -> None:
    assert parse_count(text) == value


def test_parse_size_percent_and_errors() -> None:
    assert parse_size("60%", current=1000) == 600
    for bad in ("60X", "abc", "", "-5M", "150%"):
        with pytest.raises(GraftError, match="60M|percentage|cannot parse"):
            parse_size(bad, current=1000)
    with pytest.raises(GraftError, match="current size"):
        parse_size("60%")
    assert format_count(102_341_376) == "102.34M"
    assert parse_int_list("1,8,32", "--batch") == (1, 8, 32)
    with pytest.raises(GraftError, match="--batch"):
        parse_int_list("1,x", "--batch")
