"""The frontier's judgements: every row against the dense PyTorch model on validation (which chooses) and on test
(which is only reported), the noise-aware Pareto front, and the sentence that says so.

Comparisons go through graft_edge.verdicts on the per-seed values of each (variant, format): the seeds of a
target are paired with each other across formats and targets (seed k of every variant descends from the same
finetuning chain), and dense, one model, is a fixed reference. Choices (the front here, the demo's headline)
read the validation verdicts (`val_mAP_*`); the test ones (`mAP_*`) sit beside them. A frontier without a
validation split chooses on test and says so.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

from graft_edge.verdicts import DEFAULT_MARGIN, INCONCLUSIVE, WORSE, Comparison, compare, noise_aware_front, rule_text

JUDGED = ("val_mAP", "mAP")  # validation chooses, test is reported


def choice_key(rows: Sequence[dict[str, Any]]) -> str:
    """The metric every choice is made on: val_mAP when any row has one, else mAP (no validation split)."""
    return "val_mAP" if any(r.get("val_mAP") is not None for r in rows) else "mAP"


def seed_values(seed_rows: Sequence[dict[str, Any]], key: str) -> dict[tuple[str, str], dict[int, float]]:
    """{(variant, format): {seed: value}} of the rows that finished and have `key`."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in seed_rows:
        if r.get("status", "ok") == "ok" and r.get(key) is not None:
            out.setdefault((str(r["variant"]), str(r["format"])), {})[int(r.get("seed") or 0)] = float(r[key])
    return out


def reference_row(rows: Sequence[dict[str, Any]], fmt: str | None = None) -> dict[str, Any] | None:
    """The row every other is judged against: dense PyTorch, else the dense row of `fmt` (frontiers without torch)."""
    dense = [r for r in rows if r["variant"] == "dense" and r.get("status", "ok") == "ok"]
    return next((r for r in dense if r["format"] == "torch"), None) or next((r for r in dense if r["format"] == fmt),
                                                                            None)


def comparison(row: dict[str, Any], key: str) -> Comparison | None:
    """The Comparison stored on a judged row for `key` (None when the row was not judged)."""
    rec = row.get(f"{key}_cmp")
    return Comparison(**rec) if rec else None


def mark_verdicts(rows: list[dict[str, Any]], seed_rows: Sequence[dict[str, Any]],
                  margin: float = DEFAULT_MARGIN) -> list[dict[str, Any]]:
    """Set `{key}_vs_dense` (verdict), `{key}_diff`, `{key}_diff_low`, `{key}_diff_high` (95% interval),
    `{key}_seeds_needed` and `{key}_cmp` (the whole record) for key in val_mAP, mAP on every row but the
    reference."""
    for key in JUDGED:
        values = seed_values(seed_rows, key)
        for r in rows:
            ref = reference_row(rows, r["format"])
            if ref is None or r is ref:
                continue
            c = compare(values.get((str(r["variant"]), r["format"]), {}),
                        values.get((str(ref["variant"]), ref["format"]), {}), margin)
            if c is None:
                continue
            r.update({f"{key}_vs_dense": c.verdict, f"{key}_diff": c.diff, f"{key}_diff_low": c.low,
                      f"{key}_diff_high": c.high, f"{key}_seeds_needed": c.seeds_needed, f"{key}_cmp": asdict(c)})
    return rows


def mark_front(rows: list[dict[str, Any]], seed_rows: Sequence[dict[str, Any]],
               margin: float = DEFAULT_MARGIN) -> list[dict[str, Any]]:
    """Set row['pareto'] (latency) and row['pareto_params'] (parameters): the noise-aware fronts on the choice
    metric (verdicts.noise_aware_front: a point stays only when every cheaper point is worse than it)."""
    key = choice_key(rows)
    values = seed_values(seed_rows, key)
    pts = [values.get((str(r["variant"]), r["format"]), {}) if r.get("status", "ok") == "ok" else {} for r in rows]

    def not_worse(j: int, i: int) -> bool:
        c = compare(pts[j], pts[i], margin)
        return c is not None and c.verdict != WORSE

    for cost, flag in (("latency_ms", "pareto"), ("params", "pareto_params")):
        front = noise_aware_front([r.get(cost) if pts[k] else None for k, r in enumerate(rows)], not_worse)
        for r, on in zip(rows, front):
            r[flag] = on
    return rows


def _split_sentence(rows: Sequence[dict[str, Any]], key: str, ref: dict[str, Any], role: str) -> str:
    judged = [(r, comparison(r, key)) for r in rows if comparison(r, key) is not None]
    if not judged:
        return ""
    groups: dict[str, list[str]] = {}
    for r, c in judged:
        hint = ""
        if c.verdict == INCONCLUSIVE and c.low is not None:
            hint = f" (~{c.seeds_needed} seeds would decide)" if c.seeds_needed else f" ({c.decide_hint()})"
        groups.setdefault(c.label(), []).append(f"{r['variant']} {r['format']} {c.interval()}{hint}")
    what = "val mAP" if key == "val_mAP" else "test mAP"
    parts = [f"{label}: {', '.join(items)}" for label, items in groups.items()]
    return f"{what} vs dense {ref['format']} ({role}; points, 95% interval): " + "; ".join(parts) + "."


def summary(rows: Sequence[dict[str, Any]], margin: float = DEFAULT_MARGIN) -> str:
    """The verdicts in words: validation (chooses) then test (reported), each difference with its 95% interval,
    what would decide the inconclusive ones, and the rule."""
    ref = reference_row(rows)
    if ref is None:
        return ""
    key = choice_key(rows)
    parts = [_split_sentence(rows, key, ref, "chooses the front and the headline")]
    if key != "mAP":
        parts.append(_split_sentence(rows, "mAP", ref, "reported only"))
    else:
        parts[0] = parts[0].replace("chooses", "no validation split: test chooses")
    text = " ".join(p for p in parts if p)
    return f"{text} {rule_text(margin)}" if text else ""


def front_note(rows: Sequence[dict[str, Any]]) -> str:
    """The footnote of the Pareto column: what chose it."""
    on = "validation mAP" if choice_key(rows) == "val_mAP" else "test mAP (no validation split)"
    return (f"* = on the noise-aware latency front, chosen on {on}: no faster artefact is not worse (ties inside the "
            "noise go to the faster one). Test numbers are reported beside and never choose.")
