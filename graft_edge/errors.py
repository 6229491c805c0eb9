"""The exception type users see (and its "missing here" kind), and the one way an exception becomes a single line of text."""
from __future__ import annotations

import re


class GraftError(Exception):
    """A user-facing error: bad input, a missing file, an unsatisfiable option."""


class Unavailable(GraftError):
    """Something this needs is missing on this machine (a package, a GPU, a CPU feature); other work goes on."""


_SOURCE_LOCATION = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?)$")


def one_line(exc: BaseException, limit: int = 240) -> str:
    """A single line describing an exception: GraftError text as is, others prefixed with their type."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = [ln for ln in lines if not _SOURCE_LOCATION.match(ln)]  # C++ runtimes (OpenVINO) lead with where it threw
    first = (said or lines or [""])[0][:limit]
    if isinstance(exc, GraftError):
        return first or "failed"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
