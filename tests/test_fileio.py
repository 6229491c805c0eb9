"""Crash-safe writes keep the user's normal file mode (umask), not mkstemp's private 0600; the fault-injection hook
kills at exactly the write it names."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from graft_edge.fileio import KILL_AT_WRITE_ENV, temp_dir_beside, write_json, write_text


@pytest.fixture
def umask():
    def set_to(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_to
    os.umask(old)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    a = write_text(tmp_path / "a.txt", "x")
    b = write_json(tmp_path / "b.json", {"k": 1})
    assert stat.S_IMODE(a.stat().st_mode) == mode and stat.S_IMODE(b.stat().st_mode) == mode
    write_text(a, "again")  # replacing keeps the mode (a resumed run's files stay readable)
    assert stat.S_IMODE(a.stat().st_mode) == mode and a.read_text() == "again"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left behind


def test_build_folders_get_the_directory_mode(tmp_path, umask):
    umask(0o022)
    d = temp_dir_beside(tmp_path / "dataset")
    assert d.parent == tmp_path and d.name.startswith(".dataset.tmp-")
    assert stat.S_IMODE(d.stat().st_mode) == 0o755


WRITER = """
import sys
from graft_edge.fileio import write_text
for name in ("a.json", "b.pt", "c.json", "d.pt", "e.json"):
    write_text(f"{sys.argv[1]}/{name}", name)
"""


@pytest.mark.parametrize("spec, written, killed", [("*.json:2", ["a.json", "b.pt"], "c.json"),
                                                   ("d.pt:1", ["a.json", "b.pt", "c.json"], "d.pt"),
                                                   ("*.json:4", ["a.json", "b.pt", "c.json", "d.pt", "e.json"], None)])
def test_fault_hook_kills_at_the_named_write_before_its_rename(tmp_path, spec: str, written: list[str],
                                                               killed: str | None) -> None:
    env = {**os.environ, KILL_AT_WRITE_ENV: spec, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], env=env, timeout=120).returncode
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == written
    temps = [p.read_text() for p in tmp_path.glob(".*.tmp")]
    if killed:  # the named write's temp file is complete and left behind, not renamed into place
        assert rc == -signal.SIGKILL and temps == [killed]
    else:  # fewer matching writes than N: the run is not touched
        assert rc == 0 and temps == []
