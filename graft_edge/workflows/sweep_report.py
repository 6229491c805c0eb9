"""The size sweep's report: seed rows aggregated to mean ± std (frontier_seeds), each (condition, level) judged
against dense by graft_edge.verdicts on its per-seed differences (each seed against the dense model it was pruned
from), as JSON and a Markdown table with the distillation-recovery lines."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from graft_edge.fileio import write_json, write_text
from graft_edge.verdicts import DEFAULT_MARGIN, Comparison, compare, paired, rule_text
from graft_edge.workflows.frontier_seeds import aggregate_rows

METRICS = ("val_mAP", "val_R1", "val_R5", "val_R10", "mAP", "R1", "R5", "R10")  # aggregated: mean, *_std


def sweep_rows(seed_rows: Sequence[dict[str, Any]], levels: Sequence[str],
               margin: float = DEFAULT_MARGIN) -> list[dict[str, Any]]:
    """One row per (condition, level): mean ± sample std over seeds, the share of dense test mAP kept (`kept`),
    and the test mAP judged against dense (`mAP_vs_dense`, `mAP_diff` with its 95% interval `mAP_diff_low` /
    `mAP_diff_high`, `mAP_seeds_needed`; graft_edge.verdicts at `margin`); dense first."""
    rank = {lv: i for i, lv in enumerate(levels)}
    rows = [dict(r, variant="dense" if r["condition"] == "dense" else f"{r['condition']} {r['level']}",
                 format="torch") for r in seed_rows]
    agg = aggregate_rows(rows, by=("condition", "level"), keys=METRICS)
    conds = list(dict.fromkeys(r["condition"] for r in agg if r["condition"] != "dense"))
    agg.sort(key=lambda r: (r["condition"] != "dense", conds.index(r["condition"]) if r["condition"] in conds else -1,
                            rank.get(r["level"], -1)))
    dense = next((r for r in agg if r["condition"] == "dense"), None)
    for r in agg:
        r["kept"] = r["mAP"] / dense["mAP"] if dense and dense.get("mAP") and r.get("mAP") is not None else None
        diffs = dense_diffs(seed_rows, r["condition"], r["level"]) if dense is not None and r is not dense else []
        c = paired(diffs, margin, n_ref=1 if (dense.get("n_seeds") or 0) <= 1 else None) if diffs else None
        r.update({"mAP_vs_dense": c.verdict if c else None, "mAP_diff": c.diff if c else None,
                  "mAP_diff_low": c.low if c else None, "mAP_diff_high": c.high if c else None,
                  "mAP_seeds_needed": c.seeds_needed if c else None, "mAP_method": c.method if c else None})
    return agg


def dense_diffs(seed_rows: Sequence[dict[str, Any]], condition: str, level: str, key: str = "mAP") -> list[float]:
    """Per seed: `key` of (condition, level) minus that of the dense model the seed's chain started from: the one
    dense model, else the dense row of the same `model` (several trained models), else of the same seed."""
    dense = [r for r in seed_rows if r["condition"] == "dense" and r.get(key) is not None]
    rows = [r for r in seed_rows if r["condition"] == condition and r["level"] == level and r.get(key) is not None]
    if len(dense) == 1:
        return [r[key] - dense[0][key] for r in rows]
    field = "model" if all("model" in r for r in dense) else "seed"
    base = {r.get(field): r[key] for r in dense}
    return [r[key] - base[r.get(field)] for r in rows if r.get(field) in base]


def by_seed(seed_rows: Sequence[dict[str, Any]], condition: str, level: str, key: str = "mAP") -> dict[int, float]:
    """{seed: key} of one (condition, level)."""
    return {int(r["seed"]): r[key] for r in seed_rows
            if r["condition"] == condition and r["level"] == level and r.get(key) is not None}


def _pct(v: Any, std: Any = None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if std is None else f"{100 * v:.1f} ± {100 * std:.1f}"


def recovery_lines(rows: Sequence[dict[str, Any]], plain: str = "structured+ft",
                   distilled: str = "structured+ft+kd", seed_rows: Sequence[dict[str, Any]] = (),
                   margin: float = DEFAULT_MARGIN) -> list[str]:
    """Per level: the test mAP finetuning alone loses against dense, and what distillation changes at equal epochs
    against plain finetuning, with its 95% interval and verdict (paired by seed: graft_edge.verdicts)."""
    dense = next((r for r in rows if r["condition"] == "dense"), None)
    by = {(r["condition"], r["level"]): r for r in rows}
    out = []
    for (cond, level), ft in by.items():
        kd = by.get((distilled, level))
        if cond != plain or kd is None or dense is None or ft.get("mAP") is None or kd.get("mAP") is None:
            continue
        gain = compare(by_seed(seed_rows, distilled, level), by_seed(seed_rows, plain, level), margin)
        if gain is None:
            continue
        lost = dense["mAP"] - ft["mAP"]
        share = f" ({100 * gain.diff / lost:.0f}% of it)" if lost > 0 else ""
        side = "below" if lost >= 0 else "above"
        out.append(f"{level}: finetuning alone is {100 * abs(lost):.1f} points {side} dense; distillation changes "
                   f"test mAP by {100 * gain.diff:+.1f}{share}: {gain.words('finetuning alone')}.")
    return out


def _verdict(r: dict[str, Any]) -> str:
    """'worse -4.1 [-7.9, -0.3]': the verdict, the mean per-seed difference and its 95% interval (points)."""
    if not r.get("mAP_vs_dense"):
        return "-"
    c = Comparison(r["mAP_diff"], r.get("mAP_diff_low"), r.get("mAP_diff_high"), r.get("n_seeds") or 1, 1,
                   r.get("mAP_method") or "", 0.0, r.get("mAP_seeds_needed"))
    need = f" (~{c.seeds_needed} seeds)" if r["mAP_vs_dense"] == "inconclusive" and c.seeds_needed else ""
    return f"{r['mAP_vs_dense']} {c.interval()}{need}"


def sweep_markdown(rows: Sequence[dict[str, Any]], title: str = "Size sweep",
                   seed_rows: Sequence[dict[str, Any]] = (), margin: float = DEFAULT_MARGIN) -> str:
    """The table: validation and test metrics (%, mean ± std over seeds), share of dense kept, judgement."""
    n = max((r.get("n_seeds") or 0 for r in rows), default=0)
    lines = [f"### {title}", "",
             "| Condition | Budget | Params | Nonzero | val mAP | val R1 | mAP | R1 | R5 | R10 | n | mAP kept | vs dense |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['level']} | {r['params_embedding'] / 1e3:.1f}K | {r['params_nonzero'] / 1e3:.1f}K | "
            f"{_pct(r.get('val_mAP'), r.get('val_mAP_std'))} | {_pct(r.get('val_R1'), r.get('val_R1_std'))} | "
            f"{_pct(r.get('mAP'), r.get('mAP_std'))} | {_pct(r.get('R1'), r.get('R1_std'))} | "
            f"{_pct(r.get('R5'), r.get('R5_std'))} | {_pct(r.get('R10'), r.get('R10_std'))} | {r.get('n_seeds') or '-'} | "
            f"{_pct(r.get('kept'))}% | {_verdict(r)} |")
    dense = next((r for r in rows if r["condition"] == "dense"), None)
    per_model = dense is not None and (dense.get("n_seeds") or 0) > 1
    over = (f"up to {n} seeds (n), each its own trained dense model (training seed) and finetuning chain"
            if per_model else f"up to {n} finetuning seeds (n); conditions without finetuning and dense are one model each")
    notes = [f"val: validation split (held-out training ids, used to pick each finetuning's best epoch); mAP/R1/R5/R10: test split (query/gallery, only reported). Mean ± sample std over {over}.",
             "vs dense: the verdict on test mAP, the mean per-seed difference from "
             + ("the seed's own dense model" if per_model else "the dense model")
             + " in points and its 95% interval (~N seeds: what would decide an inconclusive one at this spread). "
             + rule_text(margin)]
    recovery = recovery_lines(rows, seed_rows=seed_rows, margin=margin)
    return "\n".join(lines + [""] + notes + ([""] + recovery if recovery else [])) + "\n"


def write_sweep_reports(out: Path, rows: Sequence[dict[str, Any]], seed_rows: Sequence[dict[str, Any]],
                        meta: dict[str, Any], margin: float = DEFAULT_MARGIN) -> dict[str, Path]:
    """OUT/sweep.json ({**meta, margin, rows, seed_rows}) and OUT/sweep.md."""
    return {"json": write_json(out / "sweep.json", {**meta, "margin": margin, "rows": list(rows),
                                                    "seed_rows": list(seed_rows)}),
            "md": write_text(out / "sweep.md", sweep_markdown(rows, seed_rows=seed_rows, margin=margin))}
