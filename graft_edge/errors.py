"""The exception type users see (and its "missing here" kind), and the one way an exception becomes a single line of text."""
from __future__ import annotations


class GraftError(Exception):
    """A user-facing error: bad input, a missing file, an unsatisfiable option."""


class Unavailable(GraftError):
    """Something this needs is missing on this machine (a package, a GPU, a CPU feature); other work goes on."""


def one_line(exc: BaseException, limit: int = 240) -> str:
    """A single line describing an exception: GraftError text as is, others prefixed with their type."""
    text = str(exc).strip()
    first = text.splitlines()[0][:limit] if text else ""
    if isinstance(exc, GraftError):
        return first or "failed"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
