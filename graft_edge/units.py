"""Parsing of human sizes: parameter counts like "60M" and fractions like "60%"."""
from __future__ import annotations

import re
from dataclasses import dataclass

from graft_edge.errors import GraftError

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([KMBG]?)\s*$", re.IGNORECASE)
_PCT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
ACCEPTED = "a count like 60M, 60000000, 1.5B or 500K, or a fraction of the current size like 60%"


def parse_count(text: str | int) -> int:
    """'60M' -> 60_000_000; '1.5B' -> 1_500_000_000; '500K' -> 500_000; '123' -> 123."""
    if isinstance(text, int):
        return text
    m = _COUNT_RE.match(str(text))
    if not m:
        raise GraftError(f"cannot parse size {text!r}: expected {ACCEPTED}")
    value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value < 1:
        raise GraftError(f"size {text!r} must be at least 1 parameter")
    return int(round(value))


@dataclass(frozen=True)
class Size:
    """A size as typed, parsed once: an absolute count (60M) or a percentage of a current size (60%)."""

    text: str
    count: int | None = None
    percent: float | None = None

    def __str__(self) -> str:
        return self.text

    def of(self, current: int | None) -> int:
        """The count this size means for a model whose count is `current` (needed for a percentage)."""
        if self.count is not None:
            return self.count
        if current is None:
            raise GraftError(f"size {self.text!r} is relative: the current size is needed")
        return int(round(current * self.percent / 100.0))


def parse_size_spec(text: str | int | Size) -> Size:
    """'60M', '60000000', '1.5B', '500K' or '60%' -> Size; GraftError naming the accepted forms otherwise."""
    if isinstance(text, Size):
        return text
    m = _PCT_RE.match(str(text))
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise GraftError(f"size {text!r}: a percentage must lie in (0, 100]")
        return Size(str(text).strip(), percent=pct)
    return Size(str(text).strip(), count=parse_count(text))


def parse_size(text: str | int | Size, current: int | None = None) -> int:
    """Parse a target size; a percentage is taken of `current` (required for '60%')."""
    return parse_size_spec(text).of(current)


def format_count(n: float) -> str:
    """102_340_000 -> '102.34M'."""
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(int(n))


def parse_int_list(text: str, name: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); errors name the option."""
    try:
        vals = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise GraftError(f"{name} {text!r}: expected comma-separated positive integers, e.g. 1,8,32") from None
    if not vals or any(v < 1 for v in vals):
        raise GraftError(f"{name} {text!r}: expected comma-separated positive integers, e.g. 1,8,32")
    return vals
