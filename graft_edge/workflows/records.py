"""Recorded files of resumable workflows: a path with the size and SHA-256 it had when its piece finished, so a
rerun reuses a piece only while its files are exactly what was recorded."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from graft_edge.fileio import sha256_file
from graft_edge.runtime import artefact_files


def now() -> str:
    """UTC timestamp for the state."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fingerprint(path: Path) -> tuple[int, str]:
    """(bytes, SHA-256) of an artefact and its companion files (ONNX external data)."""
    files = artefact_files(path)
    size = sum(f.stat().st_size for f in files)
    if len(files) == 1:
        return size, sha256_file(files[0])
    return size, ":".join(sha256_file(f) for f in files)


def from_dict(cls: Any, data: dict[str, Any]) -> Any:
    """A dataclass from a dict, ignoring unknown keys (older / newer writers)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Recorded:
    """A file a piece produced, with the size and hash it had when the piece finished."""

    path: str = ""  # relative to OUT
    size_bytes: int | None = None
    sha256: str | None = None

    def record(self, out: Path, path: Path) -> None:
        """Remember `path` (relative to OUT when inside it) and its fingerprint."""
        self.path = _rel(out, path)
        self.size_bytes, self.sha256 = fingerprint(path)

    def verify(self, out: Path) -> bool:
        """Whether the file is still exactly what was recorded."""
        p = resolve(out, self.path)
        if not self.path or not p.is_file() or self.sha256 is None:
            return False
        try:
            return fingerprint(p) == (self.size_bytes, self.sha256)
        except OSError:
            return False


def _rel(out: Path, p: Path | str) -> str:
    p = Path(p)
    try:
        return str(p.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(p.resolve())


def resolve(out: Path, p: str) -> Path:
    """A recorded path as a Path (relative ones are inside OUT)."""
    q = Path(p)
    return q if q.is_absolute() else out / q
