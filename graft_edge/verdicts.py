"""Differences with their 95% intervals, and the three verdicts every comparison in the reports uses.

A comparison of a metric (mAP, say) between two things measured over seeds gives the mean difference and a 95%
confidence interval for it:

- **paired** (the same seeds and queries on both sides, or a reference measured once, such as the one dense model
  every pruned seed descends from, which is then taken as fixed): a t-interval on the per-seed differences,
  mean ± t(0.975, n - 1) x sd / sqrt(n);
- **unpaired** (independent seeds): Welch's interval, with the Welch-Satterthwaite degrees of freedom.

Verdicts, read off that interval and a margin m the user states (same unit as the values):

- **equivalent** (within ±m): the whole interval lies inside [-m, +m] (two one-sided tests at 2.5% each). This is
  checked first: a difference the user declared irrelevant stays "equivalent" even when the interval excludes 0;
- **better** / **worse**: otherwise, the interval excludes 0;
- **inconclusive**: neither, including every comparison with one seed and no known spread. It comes with the
  number of seeds that would decide at the observed mean and spread (`seeds_needed`).

Why not a bootstrap over seeds (x queries) with few seeds: with 3 seeds the bootstrap distribution of the mean
spans only the 3 values, so its 95% percentile interval is about [min, max] and excludes 0 whenever the three
differences share a sign: a quarter of all null experiments (benchmarks/verdict_null.py measures it). The t
quantile on n - 1 degrees of freedom is what makes 3 seeds honest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from scipy import stats

CONFIDENCE = 0.95
DEFAULT_MARGIN = 0.01  # fraction of mAP: 1 point
MAX_SEEDS = 1000  # seeds_needed searches up to this many; beyond it, None ("more than MAX_SEEDS")
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"
VERDICTS = (BETTER, EQUIVALENT, INCONCLUSIVE, WORSE)
PAIRED, WELCH, SINGLE = "paired t", "Welch", "one seed"


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided t critical value: the interval is mean ± this x standard error."""
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def _mean_sd(xs: Sequence[float]) -> tuple[float, float | None]:
    n = len(xs)
    mean = sum(xs) / n
    return mean, (math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None)


def welch_df(v_a: float, n_a: int, v_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom from the two sample variances and sizes (inf when both are 0)."""
    a, b = v_a / n_a, v_b / n_b
    den = a * a / (n_a - 1) + b * b / (n_b - 1)
    return (a + b) ** 2 / den if den > 0 else math.inf


@dataclass(frozen=True)
class Comparison:
    """`a - b`: the mean difference, its 95% interval (None without a known spread) and the verdict at `margin`."""

    diff: float
    low: float | None
    high: float | None
    n: int  # seeds (pairs) on side a
    n_ref: int  # seeds on side b (paired: the same as n, or 1 for a fixed reference)
    method: str  # PAIRED | WELCH | SINGLE
    margin: float
    seeds_needed: int | None = None  # inconclusive with a spread: seeds per side that would decide at it

    @property
    def verdict(self) -> str:
        """equivalent | better | worse | inconclusive (see the module docstring for the order)."""
        if self.low is None or self.high is None:
            return INCONCLUSIVE
        if self.margin > 0 and -self.margin <= self.low and self.high <= self.margin:
            return EQUIVALENT
        if self.low > 0:
            return BETTER
        if self.high < 0:
            return WORSE
        return INCONCLUSIVE

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (None without a spread)."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def interval(self, scale: float = 100.0) -> str:
        """'-1.2 [-2.0, -0.4]' (the difference and its 95% interval, times `scale`); just '-1.2' without one."""
        d = f"{scale * self.diff:+.1f}"
        return d if self.low is None else f"{d} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"

    def label(self, scale: float = 100.0) -> str:
        """The verdict with its margin when equivalent: 'equivalent (±1.0)', 'worse', ..."""
        return f"{EQUIVALENT} (±{scale * self.margin:.1f})" if self.verdict == EQUIVALENT else self.verdict

    def cell(self, scale: float = 100.0) -> str:
        """Table cell: 'worse -3.6 [-5.1, -2.1]'."""
        return f"{self.label(scale)} {self.interval(scale)}"

    def decide_hint(self) -> str:
        """What would decide an inconclusive comparison ('' otherwise)."""
        if self.verdict != INCONCLUSIVE:
            return ""
        if self.low is None:
            return "one seed, no spread known: run more seeds"
        if self.seeds_needed is None:
            return f"more than {MAX_SEEDS} seeds would be needed at this spread"
        return f"about {self.seeds_needed} seeds{' per side' if self.method == WELCH else ''} would decide at this spread"

    def words(self, ref: str = "dense", scale: float = 100.0, unit: str = "points") -> str:
        """'worse than dense: -3.6 points, 95% interval [-5.1, -2.1] (paired t, 3 seeds)', with what would decide
        an inconclusive one."""
        if self.low is None:
            return f"{INCONCLUSIVE} vs {ref}: {scale * self.diff:+.1f} {unit} ({self.decide_hint()})"
        head = {BETTER: f"better than {ref}", WORSE: f"worse than {ref}",
                EQUIVALENT: f"equivalent to {ref} within ±{scale * self.margin:.1f} {unit}",
                INCONCLUSIVE: f"{INCONCLUSIVE} vs {ref}"}[self.verdict]
        seeds = f"{self.n} seeds" if self.method == PAIRED else f"{self.n} vs {self.n_ref} seeds"
        hint = self.decide_hint()
        return (f"{head}: {scale * self.diff:+.1f} {unit}, 95% interval [{scale * self.low:+.1f}, "
                f"{scale * self.high:+.1f}] ({self.method}, {seeds})" + (f"; {hint}" if hint else ""))


def _needed(decides: Callable[[int], bool], start: int) -> int | None:
    """Smallest n in [start, MAX_SEEDS] for which `decides(n)` holds (decides is monotone in n here)."""
    if not decides(MAX_SEEDS):
        return None
    lo, hi = start, MAX_SEEDS
    while lo < hi:
        mid = (lo + hi) // 2
        if decides(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _decided(diff: float, half: float, margin: float) -> bool:
    return abs(diff) > half or (margin > 0 and abs(diff) + half <= margin)


def paired(diffs: Sequence[float], margin: float = DEFAULT_MARGIN, n_ref: int | None = None) -> Comparison:
    """Per-seed differences a_s - b_s (or a_s - b for a reference measured once): the t-interval on their mean.

    One difference gives no spread: inconclusive, no interval.
    """
    xs = [float(x) for x in diffs]
    if not xs:
        raise ValueError("paired: no differences")
    n = len(xs)
    mean, sd = _mean_sd(xs)
    if sd is None:
        return Comparison(mean, None, None, 1, n_ref or 1, SINGLE, margin)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    c = Comparison(mean, mean - half, mean + half, n, n_ref or n, PAIRED, margin)
    if c.verdict == INCONCLUSIVE:
        need = _needed(lambda k: _decided(mean, t_quantile(k - 1) * sd / math.sqrt(k), margin), n + 1)
        c = Comparison(c.diff, c.low, c.high, n, c.n_ref, PAIRED, margin, need)
    return c


def welch(a: Sequence[float], b: Sequence[float], margin: float = DEFAULT_MARGIN) -> Comparison:
    """Independent samples a and b: Welch's interval for mean(a) - mean(b); inconclusive without a spread on each
    side (fewer than two values on either)."""
    xa, xb = [float(x) for x in a], [float(x) for x in b]
    if not xa or not xb:
        raise ValueError("welch: an empty side")
    ma, sa = _mean_sd(xa)
    mb, sb = _mean_sd(xb)
    if sa is None or sb is None:
        return Comparison(ma - mb, None, None, len(xa), len(xb), SINGLE, margin)
    return welch_stats(ma, sa, len(xa), mb, sb, len(xb), margin)


def welch_stats(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                margin: float = DEFAULT_MARGIN) -> Comparison:
    """Welch's interval from summary statistics (means, sample sds, sizes >= 2)."""
    diff = mean_a - mean_b
    va, vb = sd_a * sd_a, sd_b * sd_b

    def half(k_a: int, k_b: int) -> float:
        se = math.sqrt(va / k_a + vb / k_b)
        return t_quantile(welch_df(va, k_a, vb, k_b)) * se if se > 0 else 0.0

    h = half(n_a, n_b)
    c = Comparison(diff, diff - h, diff + h, n_a, n_b, WELCH, margin)
    if c.verdict == INCONCLUSIVE:
        need = _needed(lambda k: _decided(diff, half(k, k), margin), max(n_a, n_b) + 1)
        c = Comparison(diff, c.low, c.high, n_a, n_b, WELCH, margin, need)
    return c


def compare(a: Mapping[int, float], b: Mapping[int, float], margin: float = DEFAULT_MARGIN) -> Comparison | None:
    """a - b for values keyed by seed: paired on the common seeds when both sides have the same seeds, paired
    against a fixed reference when one side has a single value, Welch otherwise; None when a side is empty."""
    a = {k: float(v) for k, v in a.items() if v is not None}
    b = {k: float(v) for k, v in b.items() if v is not None}
    if not a or not b:
        return None
    if len(b) == 1 and len(a) >= 1:
        ref = next(iter(b.values()))
        return paired([v - ref for v in a.values()], margin, n_ref=1)
    if len(a) == 1:
        val = next(iter(a.values()))
        c = paired([val - v for v in b.values()], margin, n_ref=len(b))
        return Comparison(c.diff, c.low, c.high, 1, len(b), c.method, margin, c.seeds_needed)
    if set(a) == set(b):
        return paired([a[k] - b[k] for k in sorted(a)], margin)
    return welch(list(a.values()), list(b.values()), margin)


def noise_aware_front(costs: Sequence[float | None], not_worse: Callable[[int, int], bool]) -> list[bool]:
    """Which points are on the front: i is, unless some point j with a lower cost is not worse than i
    (`not_worse(j, i)`: j's verdict against i is not "worse"). Ties inside the noise go to the cheaper point;
    a slower point stays only when every cheaper one is worse than it. Points without a cost are never on it."""
    out = []
    for i, c in enumerate(costs):
        if c is None or (isinstance(c, float) and math.isnan(c)):
            out.append(False)
            continue
        out.append(not any(cj is not None and cj < c and not_worse(j, i) for j, cj in enumerate(costs) if j != i))
    return out


def rule_text(margin: float = DEFAULT_MARGIN, scale: float = 100.0, unit: str = "points") -> str:
    """The verdict rule in one sentence, for report footnotes."""
    return (f"Verdicts (graft_edge/verdicts.py) read the difference's 95% interval (paired t on per-seed differences; "
            f"Welch for independent seeds): equivalent when it lies inside ±{scale * margin:.1f} {unit} (--margin), "
            "else better/worse when it excludes 0, else inconclusive (one seed without a known spread always is).")
