"""Output folders: what a run owns (the only entries --overwrite may delete), a lock per folder, stale temp cleanup.

Every command that writes into a folder names the entries it owns; `--overwrite` removes those and
nothing else (a symlink is unlinked, never followed). `OutputLock` is an advisory `fcntl.flock` on
FOLDER/.graft-edge.lock held for the whole run, so a second run into the same folder fails fast
naming the holder's PID; the kernel drops the lock when its holder dies, so a killed run never
leaves a stale lock behind (its file may stay; the next run takes it over). The holder removes the
file on release.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
import weakref
from pathlib import Path
from typing import Iterable, Sequence

from graft_edge.errors import GraftError

LOCK_NAME = ".graft-edge.lock"


def remove_entry(path: Path) -> None:
    """Delete a file, a folder tree, or a symlink itself (never what it points to)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def existing(root: Path, names: Iterable[str]) -> list[Path]:
    """The entries of `root` among `names` that exist (dangling symlinks included)."""
    return [root / n for n in names if (root / n).is_symlink() or (root / n).exists()]


def foreign_entries(root: Path, owned: Iterable[str]) -> list[Path]:
    """Entries of `root` a run did not write (the lock file and owned names excluded)."""
    keep = set(owned) | {LOCK_NAME}
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name not in keep)


def is_empty(root: Path) -> bool:
    """True when `root` is absent or holds nothing but the lock file."""
    return not root.is_dir() or all(p.name == LOCK_NAME for p in root.iterdir())


def clear_owned(root: Path, owned: Iterable[str]) -> list[Path]:
    """--overwrite: delete the owned entries of `root` (other entries are kept); returns what was removed."""
    removed = existing(root, owned)
    for path in removed:
        try:
            remove_entry(path)
        except OSError as exc:
            raise GraftError(f"--overwrite: cannot remove {path}: {exc.strerror or exc}") from None
    return removed


def clean_stale_temps(root: Path, patterns: Sequence[str]) -> list[Path]:
    """Delete leftovers of killed runs (temp files/folders matching `patterns`) in a folder whose lock we hold."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for pattern in patterns:
        for path in root.glob(pattern):
            try:
                remove_entry(path)
                removed.append(path)
            except OSError:
                pass  # best effort: a leftover that cannot be removed does no harm
    return removed


class FolderBusy(GraftError):
    """Another live process holds the folder's lock."""


class OutputLock:
    """Exclusive advisory lock on FOLDER/.graft-edge.lock (creates FOLDER); GraftError naming the holder if taken."""

    def __init__(self, root: str | os.PathLike, what: str = "run", name: str = LOCK_NAME) -> None:
        self.root, self.what, self.name = Path(root), what, name
        self.fd: int | None = None
        self.created = False

    @classmethod
    def for_file(cls, path: str | os.PathLike, what: str) -> OutputLock:
        """A lock for one output file: .NAME.lock beside it (other files in that folder stay free)."""
        path = Path(path)
        return cls(path.parent, what, name=f".{path.name}.lock")

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.root / self.name

    def acquire(self) -> OutputLock:
        """Take the lock without waiting; the file records our PID for the error of the next contender."""
        self.created = not self.root.exists()
        for _ in range(50):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise FolderBusy(f"{self.root} is in use by another {self.what} (PID {holder or '?'}): wait for it "
                                     "to finish or use another output folder") from None
                raise GraftError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
            if _same_file(fd, self.path):  # not unlinked by a releasing holder between our open and flock
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                _HELD.add(self)
                return self
            os.close(fd)
        raise GraftError(f"cannot lock {self.path}: it keeps being replaced")

    def _open(self) -> int:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GraftError(f"cannot create the output folder {self.root}: {exc.strerror or exc}") from None
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GraftError(f"cannot write in {self.root} ({self.path.name}: {exc.strerror or exc})") from None

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no contender can hold a stale inode) and drop the lock."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            _HELD.discard(self)
            if self.created:
                with contextlib.suppress(OSError):
                    self.root.rmdir()  # a folder this run created and left empty (it failed early) goes too

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: weakref.WeakSet[OutputLock] = weakref.WeakSet()  # locks this process holds


def _drop_in_forked_child() -> None:
    """A forked child (a DataLoader worker) closes its copies of the lock fds without unlocking: the flock
    then lives exactly as long as the parent, so a SIGKILLed run's folder is free at once for --resume."""
    for lock in list(_HELD):
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_in_forked_child)


def _same_file(fd: int, path: Path) -> bool:
    """True when the open file `fd` is still the file at `path`."""
    try:
        st, fst = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _read_pid(fd: int) -> str:
    """The PID the current holder wrote into the lock file (may be empty for a moment after it took the lock)."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.005)
    return ""
