"""When a difference from dense counts: the one rule every sentence that compares a variant with dense follows.

Rule: a variant is called better or worse than dense only when |variant mean - dense mean| exceeds the combined
seed noise sqrt(s_variant^2 + s_dense^2), where s is the sample std over finetuning seeds and a side without
one (dense is one model; a single-seed variant) takes the pooled std of the variants of that format. With no
std at all (a single seed everywhere) the noise is the stated floor SINGLE_SEED_FLOOR. Anything else is
"within noise": the words never rank it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from graft_edge.workflows.frontier_seeds import mean_std, pooled_std

SINGLE_SEED_FLOOR = 0.03  # mAP (fraction): differences under 3 points are not significant with one seed
WITHIN, BETTER, WORSE = "within noise", "better", "worse"


def rule_text(floor: float = SINGLE_SEED_FLOOR) -> str:
    """The rule in one sentence, for reports."""
    return (f"A variant is called better or worse than dense only when |mean - dense| > sqrt(std^2 + dense std^2) "
            f"(sample stds over finetuning seeds; a missing std is the pooled std of the variants); single seed: "
            f"differences under {100 * floor:.0f} points are not significant.")


@dataclass(frozen=True)
class Judgement:
    """A variant's metric against dense's: the difference, the noise it is judged against, and the verdict."""

    diff: float  # variant - dense (fraction)
    noise: float  # the threshold |diff| must exceed (fraction)
    single_seed: bool  # noise is the single-seed floor, not a measured std

    @property
    def verdict(self) -> str:
        """better | worse | within noise."""
        if abs(self.diff) <= self.noise:
            return WITHIN
        return BETTER if self.diff > 0 else WORSE

    def words(self, ref: str = "dense") -> str:
        """'within noise of dense (-0.6 points; noise 2.1)' or '4.2 points below dense (noise 1.3)'."""
        how = "single-seed floor" if self.single_seed else "noise"
        if self.verdict == WITHIN:
            return f"within noise of {ref} ({100 * self.diff:+.1f} points; {how} {100 * self.noise:.1f})"
        side = "above" if self.diff > 0 else "below"
        return f"{100 * abs(self.diff):.1f} points {side} {ref} ({how} {100 * self.noise:.1f})"


def judge(value: float | None, ref: float | None, std: float | None = None, ref_std: float | None = None,
          pooled: float | None = None, floor: float = SINGLE_SEED_FLOOR) -> Judgement | None:
    """`value` (mean over seeds) against `ref` (dense) by the module's rule; None when either is unknown."""
    if value is None or ref is None:
        return None
    s_v = std if std is not None else pooled
    s_r = ref_std if ref_std is not None else pooled
    if s_v is None and s_r is None:
        return Judgement(float(value) - float(ref), float(floor), True)
    return Judgement(float(value) - float(ref), math.sqrt((s_v or 0.0) ** 2 + (s_r or 0.0) ** 2), False)


PAIRED_RULE = ("Where every seed has its own dense model (a sweep over several trained models), differences are "
               "paired: the mean of the per-seed differences counts only when it exceeds their sample std.")


def judge_paired(diffs: Sequence[float]) -> Judgement | None:
    """Per-seed differences (variant_s - dense_s, the same training seed) judged by their own spread: the mean
    counts only when it exceeds the sample std of the differences; None with fewer than two."""
    mean, std, _ = mean_std(diffs)
    return Judgement(mean, std, False) if std is not None else None


def judge_row(row: dict[str, Any], ref: dict[str, Any], rows: Sequence[dict[str, Any]], key: str = "mAP",
              floor: float = SINGLE_SEED_FLOOR) -> Judgement | None:
    """One (mean ± std) row against a reference row, missing stds pooled over `rows` of the row's format."""
    return judge(row.get(key), ref.get(key), row.get(f"{key}_std"), ref.get(f"{key}_std"),
                 pooled_std(rows, row["format"], key), floor)


def judge_rows(rows: Sequence[dict[str, Any]], key: str = "mAP",
               floor: float = SINGLE_SEED_FLOOR) -> dict[int, Judgement]:
    """Every non-dense row (by index) judged against the dense row of its format (mean ± std rows)."""
    out: dict[int, Judgement] = {}
    for i, r in enumerate(rows):
        dense = next((d for d in rows if d["variant"] == "dense" and d["format"] == r["format"]), None)
        j = judge_row(r, dense, rows, key, floor) if dense is not None and r["variant"] != "dense" else None
        if j is not None:
            out[i] = j
    return out


def mark_vs_dense(rows: list[dict[str, Any]], key: str = "mAP") -> list[dict[str, Any]]:
    """Set `{key}_vs_dense` (better / worse / within noise) and `{key}_noise` on every judged row."""
    for i, j in judge_rows(rows, key).items():
        rows[i][f"{key}_vs_dense"], rows[i][f"{key}_noise"] = j.verdict, j.noise
    return rows


def summary(rows: Sequence[dict[str, Any]], key: str = "mAP") -> str:
    """One sentence: which variants are within noise of dense, which better or worse (by the rule), and the rule."""
    judged = judge_rows(rows, key)
    if not judged:
        return ""
    groups: dict[str, list[str]] = {}
    for i, j in judged.items():
        groups.setdefault(j.verdict, []).append(f"{rows[i]['variant']} {rows[i]['format']}")
    single = any(j.single_seed for j in judged.values())
    parts = [f"{verdict} than dense: {', '.join(names)}" if verdict != WITHIN else
             f"within noise of dense: {', '.join(names)}" for verdict, names in sorted(groups.items())]
    head = f"{key} vs dense" + (" (single seed)" if single else "")
    return f"{head}: " + "; ".join(parts) + ". " + rule_text()
