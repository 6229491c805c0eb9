"""Termination signals: SIGTERM handled like Ctrl-C, and worker processes that die with their launcher.

`Interrupted` is a KeyboardInterrupt carrying the signal, so every `finally` and temp-file cleanup
that runs on Ctrl-C also runs on SIGTERM, and the CLI exits 128 + signal number with one line.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LAUNCHER_PID_ENV = "GRAFT_EDGE_LAUNCHER_PID"


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT or SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises Interrupted (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(exc: BaseException) -> int:
    """Shell convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def die_with_parent(expected_parent: int | None = None) -> bool:
    """Linux: have the kernel SIGKILL this process when its parent (the launcher) dies; True when armed.

    Closes the race where the parent died before the call: if the parent is no longer
    `expected_parent`, this process exits at once.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(128 + signal.SIGKILL)
    return True
