"""Crash-safe file writes (temp file in the same folder + rename) and small JSON/YAML helpers."""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from graft_edge.errors import GraftError, one_line

# Test hook of the fault-injection tests: "NAME:N" makes the process SIGKILL itself at its Nth atomic write of a file
# whose name matches the glob NAME, after the temp file is complete and before it is renamed into place.
KILL_AT_WRITE_ENV = "GRAFT_EDGE_TEST_KILL_AT_WRITE"
_writes_seen: dict[str, int] = {}


def _fault_point(path: Path) -> None:
    """SIGKILL this process here when KILL_AT_WRITE_ENV names this write (a fixed, repeatable crash point)."""
    spec = os.environ.get(KILL_AT_WRITE_ENV)
    if not spec:
        return
    pattern, _, count = spec.rpartition(":")
    if fnmatch.fnmatchcase(path.name, pattern or "*"):
        _writes_seen[spec] = _writes_seen.get(spec, 0) + 1
        if _writes_seen[spec] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits `open()` gives a new file here: 0666 less the process umask."""
    return 0o666 & ~_umask()


def temp_dir_beside(path: Path) -> Path:
    """A fresh hidden folder beside `path` (to build a tree, then rename it into place) with the user's mode."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed.

    The temp file gets the user's normal file mode (umask), not mkstemp's private 0600, so the final
    file is as readable as any other this process writes.
    """
    path = Path(path)
    if path.is_dir():
        raise GraftError(f"cannot write {path}: it is a folder, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, new_file_mode())
    except OSError as exc:
        raise GraftError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fault_point(path)
        os.replace(tmp_path, path)
    except OSError as exc:  # a full disk, a quota, a vanished folder: one line naming the file
        other = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(tmp_path) else ""
        raise GraftError(f"cannot write {path}: {exc.strerror or exc}{other}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call write(tmp_path) and atomically move the result to `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write pretty JSON."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write YAML (used for resolved configs)."""
    import yaml

    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with a one-line error naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GraftError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GraftError(f"config file {path} is not valid YAML: {one_line(exc)}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (identifies the source checkpoint of an export)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
