"""Crash-safe writes keep the user's normal file mode (umask), not mkstemp's private 0600."""
from __future__ import annotations

import os
import stat

import pytest

from graft_edge.fileio import temp_dir_beside, write_json, write_text


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
