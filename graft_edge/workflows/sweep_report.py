"""The size sweep's report: seed rows aggregated to mean ± std (frontier_seeds), judged against dense
(workflows.noise), as JSON and a Markdown table with the distillation-recovery lines."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from graft_edge.fileio import write_json, write_text
from graft_edge.workflows.frontier_seeds import aggregate_rows
from graft_edge.workflows.noise import judge, judge_row, rule_text

METRICS = ("val_mAP", "val_R1", "val_R5", "val_R10", "mAP", "R1", "R5", "R10")  # aggregated: mean, *_std


def sweep_rows(seed_rows: Sequence[dict[str, Any]], levels: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (condition, level): mean ± sample std over seeds, the share of dense test mAP kept
    (`kept`), and the test mAP judged against dense (`mAP_vs_dense`, `mAP_noise`); dense first."""
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
        j = judge_row(r, dense, agg) if dense is not None and r is not dense else None
        r["mAP_vs_dense"], r["mAP_noise"] = (j.verdict, j.noise) if j else (None, None)
    return agg


def _pct(v: Any, std: Any = None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if std is None else f"{100 * v:.1f} ± {100 * std:.1f}"


def recovery_lines(rows: Sequence[dict[str, Any]], plain: str = "structured+ft",
                   distilled: str = "structured+ft+kd") -> list[str]:
    """Per level: the test mAP finetuning alone loses against dense, how much of it distillation recovers at equal
    epochs, and whether the gain of distillation over plain finetuning is beyond the seed noise (workflows.noise)."""
    dense = next((r for r in rows if r["condition"] == "dense"), None)
    by = {(r["condition"], r["level"]): r for r in rows}
    out = []
    for (cond, level), ft in by.items():
        kd = by.get((distilled, level))
        if cond != plain or kd is None or dense is None or ft.get("mAP") is None or kd.get("mAP") is None:
            continue
        lost = dense["mAP"] - ft["mAP"]
        gain = judge(kd["mAP"], ft["mAP"], kd.get("mAP_std"), ft.get("mAP_std"))
        share = f" ({100 * gain.diff / lost:.0f}% of it)" if lost > 0 else ""
        side = "below" if lost >= 0 else "above"
        out.append(f"{level}: finetuning alone is {100 * abs(lost):.1f} points {side} dense; distillation changes "
                   f"test mAP by {100 * gain.diff:+.1f}{share}, "
                   + ("beyond" if gain.verdict != "within noise" else "within")
                   + f" the seed noise ({100 * gain.noise:.1f}).")
    return out


def sweep_markdown(rows: Sequence[dict[str, Any]], title: str = "Size sweep") -> str:
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
            f"{_pct(r.get('kept'))}% | {r.get('mAP_vs_dense') or '-'} |")
    notes = [f"val: validation split (held-out training ids, used to pick each finetuning's best epoch); mAP/R1/R5/R10: "
             f"test split (query/gallery, only reported). Mean ± sample std over up to {n} finetuning seeds (n); "
             "conditions without finetuning and dense are one model each.", rule_text()]
    recovery = recovery_lines(rows)
    return "\n".join(lines + [""] + notes + ([""] + recovery if recovery else [])) + "\n"


def write_sweep_reports(out: Path, rows: Sequence[dict[str, Any]], seed_rows: Sequence[dict[str, Any]],
                        meta: dict[str, Any]) -> dict[str, Path]:
    """OUT/sweep.json ({**meta, rows, seed_rows}) and OUT/sweep.md."""
    return {"json": write_json(out / "sweep.json", {**meta, "rows": list(rows), "seed_rows": list(seed_rows)}),
            "md": write_text(out / "sweep.md", sweep_markdown(rows))}
