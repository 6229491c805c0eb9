"""Checkpoints: weights_only round trip, atomic writes, and every bad-file case as one clear error."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.checkpoint import FORMAT, load_model, read_checkpoint, save_checkpoint
from graft_edge.config import get_preset
from graft_edge.errors import GraftError
from graft_edge.model import build_model


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_round_trip_is_weights_only(tiny_checkpoint: Path) -> None:
    raw = torch.load(tiny_checkpoint, weights_only=True)
    assert raw["format"] == FORMAT and raw["config"]["preset"] == "synthetic"


@pytest.mark.parametrize("neck_feat", ["before", "after"])
def test_round_trip_gives_back_the_saved_model(tmp_path: Path, neck_feat: str) -> None:
    cfg = get_preset("synthetic")
    cfg = replace(cfg, model=replace(cfg.model, neck_feat=neck_feat))
    torch.manual_seed(0)
    saved = build_model(cfg.model).eval()
    with torch.no_grad():  # non-default buffers and weights, so that a fresh init could not pass by accident
        saved.head.bn.running_mean.normal_(0, 0.5)
        saved.head.bn.running_var.uniform_(0.5, 2.0)
        saved.head.bn.weight.uniform_(0.5, 1.5)
        saved.head.bn.num_batches_tracked.fill_(7)
    history = [{"method": "structured", "target": "60M", "mAP": 0.25}]
    path = save_checkpoint(tmp_path / "m.pt", saved, cfg, history=history, meta={"note": "x"}, extra={"step": 3})
    model, ckpt = load_model(path)
    assert not model.training
    assert ckpt.config == cfg and ckpt.history == history and ckpt.arch is None
    assert ckpt.meta["note"] == "x" and ckpt.meta["torch"] == str(torch.__version__) and ckpt.extra == {"step": 3}
    want, got = saved.state_dict(), model.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    g = torch.Generator().manual_seed(1)
    x = {m: torch.randn(3, 3, 32, 64, generator=g) for m in cfg.model.modalities}
    with torch.no_grad():
        ref, out = saved.embed(x), model.embed(x)
        assert torch.equal(out, ref)
        assert torch.equal(model(x).logits, saved(x).logits)
    # the loaded model is the saved one, not merely an equally built one: a fresh seed-1 model embeds differently
    torch.manual_seed(1)
    with torch.no_grad():
        assert (build_model(cfg.model).eval().embed(x) - ref).abs().max() > 1e-3


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, tiny_checkpoint: Path) -> None:
    before = tiny_checkpoint.read_bytes()
    model = build_model(get_preset("synthetic").model)

    class Boom(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        save_checkpoint(tiny_checkpoint, Boom(), get_preset("synthetic"))
    assert tiny_checkpoint.read_bytes() == before
    assert [p.name for p in tiny_checkpoint.parent.iterdir() if p.name.endswith(".tmp")] == []
    save_checkpoint(tmp_path / "new" / "m.pt", model, get_preset("synthetic"))
    assert (tmp_path / "new" / "m.pt").is_file()


@pytest.mark.parametrize("case", ["missing", "truncated", "pickle", "version", "foreign", "garbage", "badconfig"])
def test_bad_checkpoints_give_one_clear_error(tmp_path: Path, tiny_checkpoint: Path, case: str) -> None:
    path = tmp_path / f"{case}.pt"
    raw = torch.load(tiny_checkpoint, weights_only=True)
    if case == "truncated":
        data = tiny_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "pickle":
        torch.save({**raw, "meta": {"x": _Evil()}}, path)
    elif case == "version":
        torch.save({**raw, "version": 99}, path)
    elif case == "foreign":
        torch.save({"model": raw["state_dict"]}, path)
    elif case == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "badconfig":
        torch.save({**raw, "config": {**raw["config"], "bogus": 1}}, path)
    with pytest.raises(GraftError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    expected = {"missing": "does not exist", "truncated": "corrupt or truncated", "pickle": "pickled object",
                "version": "version 99", "foreign": "not a graft-edge checkpoint", "garbage": "corrupt",
                "badconfig": "bogus"}[case]
    assert expected in msg


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path, tiny_checkpoint: Path) -> None:
    raw = torch.load(tiny_checkpoint, weights_only=True)
    sd = dict(raw["state_dict"])
    sd.pop("fusion.fusion_token")
    path = tmp_path / "mismatch.pt"
    torch.save({**raw, "state_dict": sd}, path)
    with pytest.raises(GraftError, match="do not match"):
        load_model(path)
