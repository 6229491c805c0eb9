"""The size sweep's report: seed rows aggregated to mean ± std (frontier_seeds), judged against dense
(workflows.noise), as JSON and a Markdown table with the distillation-recovery lines."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from graft_edge.fileio import write_json, write_text
from graft_edge.workflows.frontier_seeds import aggregate_rows
from graft_edge.workflows.noise import PAIRED_RULE, judge, judge_paired, judge_row, rule_text

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
    paired = dense is not None and (dense.get("n_seeds") or 0) > 1  # one dense model per seed: pair by seed
    for r in agg:
        r["kept"] = r["mAP"] / dense["mAP"] if dense and dense.get("mAP") and r.get("mAP") is not None else None
        j = None
        if dense is not None and r is not dense:
            j = judge_paired(paired_diffs(seed_rows, r["condition"], r["level"])) if paired else None
            r["mAP_paired"] = j is not None
            j = j or judge_row(r, dense, agg)
        r["mAP_vs_dense"], r["mAP_noise"] = (j.verdict, j.noise) if j else (None, None)
        r["mAP_diff"] = j.diff if j else None
    return agg


def paired_diffs(seed_rows: Sequence[dict[str, Any]], condition: str, level: str, ref: str = "dense",
                 ref_level: str | None = None, key: str = "mAP") -> list[float]:
    """Per-seed `key` of (condition, level) minus the same seed's (ref, ref_level) row (dense: its own level)."""
    base = {r["seed"]: r.get(key) for r in seed_rows
            if r["condition"] == ref and (ref_level is None or r["level"] == ref_level)}
    return [r[key] - base[r["seed"]] for r in seed_rows if r["condition"] == condition and r["level"] == level
            and r.get(key) is not None and base.get(r["seed"]) is not None]


def _pct(v: Any, std: Any = None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if std is None else f"{100 * v:.1f} ± {100 * std:.1f}"


def recovery_lines(rows: Sequence[dict[str, Any]], plain: str = "structured+ft",
                   distilled: str = "structured+ft+kd", seed_rows: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Per level: the test mAP finetuning alone loses against dense, how much of it distillation recovers at equal
    epochs, and whether the gain of distillation over plain finetuning is beyond the seed noise (workflows.noise;
    paired by seed when `seed_rows` give every seed its own dense model)."""
    dense = next((r for r in rows if r["condition"] == "dense"), None)
    by = {(r["condition"], r["level"]): r for r in rows}
    out = []
    for (cond, level), ft in by.items():
        kd = by.get((distilled, level))
        if cond != plain or kd is None or dense is None or ft.get("mAP") is None or kd.get("mAP") is None:
            continue
        lost = dense["mAP"] - ft["mAP"]
        gain = None
        if (dense.get("n_seeds") or 0) > 1 and seed_rows:
            gain = judge_paired(paired_diffs(seed_rows, distilled, level, ref=plain, ref_level=level))
        gain = gain or judge(kd["mAP"], ft["mAP"], kd.get("mAP_std"), ft.get("mAP_std"))
        share = f" ({100 * gain.diff / lost:.0f}% of it)" if lost > 0 else ""
        side = "below" if lost >= 0 else "above"
        out.append(f"{level}: finetuning alone is {100 * abs(lost):.1f} points {side} dense; distillation changes "
                   f"test mAP by {100 * gain.diff:+.1f}{share}, "
                   + ("beyond" if gain.verdict != "within noise" else "within")
                   + f" the seed noise ({100 * gain.noise:.1f}).")
    return out


def _verdict(r: dict[str, Any]) -> str:
    """'worse (-4.1, noise 3.8)': the judgement, the (paired, where marked) mean difference and its noise."""
    if not r.get("mAP_vs_dense"):
        return "-"
    diff, noise = r.get("mAP_diff"), r.get("mAP_noise")
    detail = f" ({100 * diff:+.1f}{' paired' if r.get('mAP_paired') else ''}, noise {100 * noise:.1f})" \
        if diff is not None and noise is not None else ""
    return f"{r['mAP_vs_dense']}{detail}"


def sweep_markdown(rows: Sequence[dict[str, Any]], title: str = "Size sweep",
                   seed_rows: Sequence[dict[str, Any]] = ()) -> str:
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
    paired = dense is not None and (dense.get("n_seeds") or 0) > 1
    over = (f"up to {n} seeds (n), each its own trained dense model (training seed) and finetuning chain"
            if paired else f"up to {n} finetuning seeds (n); conditions without finetuning and dense are one model each")
    notes = [f"val: validation split (held-out training ids, used to pick each finetuning's best epoch); mAP/R1/R5/R10: "
             f"test split (query/gallery, only reported). Mean ± sample std over {over}.", rule_text()]
    if paired:
        notes.append(PAIRED_RULE + " 'diff' is that mean (test mAP points vs the same seed's dense).")
    recovery = recovery_lines(rows, seed_rows=seed_rows)
    return "\n".join(lines + [""] + notes + ([""] + recovery if recovery else [])) + "\n"


def write_sweep_reports(out: Path, rows: Sequence[dict[str, Any]], seed_rows: Sequence[dict[str, Any]],
                        meta: dict[str, Any]) -> dict[str, Path]:
    """OUT/sweep.json ({**meta, rows, seed_rows}) and OUT/sweep.md."""
    return {"json": write_json(out / "sweep.json", {**meta, "rows": list(rows), "seed_rows": list(seed_rows)}),
            "md": write_text(out / "sweep.md", sweep_markdown(rows, seed_rows=seed_rows))}
