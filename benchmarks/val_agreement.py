"""Does validation track test? The range of validation mAP and its Spearman rank agreement with test mAP over the
evaluations of training runs (epochs), a size sweep's rows (variants) and a frontier's seed rows.

Validation can only select what it can rank: a split whose mAP sits near 100 for every epoch and variant ranks them
by noise. Inputs are the files the commands already write:

    python benchmarks/val_agreement.py --run OUT/train-s0 --run OUT/train-s1 --sweep OUT/sweep/sweep.json \\
        --frontier demo/frontier/frontier.json --json agreement.json

--run reads RUN/metrics.jsonl (every evaluation with both val_mAP and mAP); --sweep and --frontier read the per-seed
rows of sweep.json / frontier.json (one point per (condition, level, seed) or (variant, format, seed)).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from scipy import stats


def _pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(float(r["val_mAP"]), float(r["mAP"])) for r in rows
            if r.get("val_mAP") is not None and r.get("mAP") is not None and r.get("status", "ok") == "ok"]


def run_points(run: Path) -> list[tuple[float, float]]:
    """(val mAP, test mAP) of every evaluation in a training run's metrics.jsonl."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: --run {run}: no metrics.jsonl")
    return _pairs([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def report_points(path: Path) -> list[tuple[float, float]]:
    """(val mAP, test mAP) of every per-seed row of a sweep.json or frontier.json."""
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist")
    return _pairs(json.loads(path.read_text()).get("seed_rows", []))


def agreement(points: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """n, val and test mAP ranges (%), Spearman's rho of val vs test and its p-value."""
    if len(points) < 3:
        return {"n": len(points)}
    val, test = [p[0] for p in points], [p[1] for p in points]
    rho, p = stats.spearmanr(val, test)
    return {"n": len(points), "val_min": 100 * min(val), "val_max": 100 * max(val), "test_min": 100 * min(test),
            "test_max": 100 * max(test), "spearman": float(rho), "p_value": float(p)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", default=[], help="Training run folder (metrics.jsonl).")
    ap.add_argument("--sweep", type=Path, action="append", default=[], help="sweep.json of prune_sweep.py.")
    ap.add_argument("--frontier", type=Path, action="append", default=[], help="frontier.json of a frontier/demo.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args(argv)
    groups: dict[str, list[tuple[float, float]]] = {}
    for run in args.run:
        groups[f"epochs: {run}"] = run_points(run)
    for path in args.sweep + args.frontier:
        groups[f"rows: {path}"] = report_points(path)
    if not groups:
        ap.error("give at least one --run, --sweep or --frontier")
    if len(groups) > 1:
        groups["all of the above"] = [p for pts in list(groups.values()) for p in pts]
    out = {name: agreement(pts) for name, pts in groups.items()}
    print("| points | n | val mAP range | test mAP range | Spearman (val, test) |")
    print("|---|---:|---:|---:|---:|")
    for name, a in out.items():
        if a["n"] < 3:
            print(f"| {name} | {a['n']} | - | - | - |")
            continue
        print(f"| {name} | {a['n']} | {a['val_min']:.1f}-{a['val_max']:.1f} | {a['test_min']:.1f}-{a['test_max']:.1f} "
              f"| {a['spearman']:.2f} (p = {a['p_value']:.2g}) |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
