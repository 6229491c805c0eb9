"""Hostile-input and fault repros (issue 15): each test is one defect of the probe, small and fast."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from graft_edge.cli.main import app

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
