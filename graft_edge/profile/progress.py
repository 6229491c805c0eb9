"""Progress hooks for long measurements and workflows: the protocol, a silent one, and rich bars."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# A progress hook: called with (description, total or None) when a phase starts; returns advance(n).
ProgressHook = Callable[[str, "int | None"], Callable[[int], None]]


def no_progress(description: str, total: int | None) -> Callable[[int], None]:
    """The silent hook (library calls without a display)."""
    return lambda n: None


@contextlib.contextmanager
def rich_progress(console: Console | None = None) -> Iterator[ProgressHook]:
    """Yield a hook `(description, total) -> advance(n)`; each phase gets its own bar, finished ones hide."""
    console = console or Console(stderr=True, highlight=False)
    bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
    current: list[int] = []

    def hook(description: str, total: int | None) -> Callable[[int], None]:
        for t in current:  # one bar at a time: the previous phase is over
            bars.remove_task(t)
        current.clear()
        task = bars.add_task(description, total=total)
        current.append(task)
        return lambda n: bars.advance(task, n)

    with bars:
        yield hook
