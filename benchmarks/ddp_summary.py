"""Summarise benchmarks/ddp_equivalence.sh: test mAP of --nproc 1 and 2 per training seed, the paired difference
(2 - 1) with its 95% t-interval, and each run's training throughput.

    python benchmarks/ddp_summary.py OUT [--json summary.json]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

from scipy import stats


def read_run(run: Path) -> dict:
    """Test/val mAP of the delivered model and the mean training samples/s over the run's epochs."""
    result = json.loads((run / "result.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    sps = [r["samples_per_s"] for r in rows if r.get("samples_per_s")]
    steps = rows[-1]["step"] if rows else 0
    seconds = sum(r["seconds"] for r in rows)
    return {"mAP": 100 * result["metrics"]["mAP"], "val_mAP": 100 * result["metrics"].get("val_mAP", float("nan")),
            "samples_per_s": statistics.fmean(sps), "steps": steps, "train_seconds": seconds}


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its two-sided t-interval (n - 1 degrees of freedom)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="The folder benchmarks/ddp_equivalence.sh wrote (n1-s0, n2-s0, ...).")
    ap.add_argument("--json", type=Path, help="Also write the table as JSON here.")
    args = ap.parse_args()
    seeds = sorted({int(m.group(1)) for p in args.out.glob("n1-s*") if (m := re.fullmatch(r"n1-s(\d+)", p.name))})
    rows = []
    for s in seeds:
        one, two = args.out / f"n1-s{s}", args.out / f"n2-s{s}"
        if (one / "result.json").is_file() and (two / "result.json").is_file():
            rows.append({"seed": s, "one": read_run(one), "two": read_run(two)})
    print("| seed | test mAP, 1 process | 2 processes | difference | val mAP 1 / 2 | samples/s 1 / 2 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["one"], r["two"]
        print(f"| {r['seed']} | {a['mAP']:.2f} | {b['mAP']:.2f} | {b['mAP'] - a['mAP']:+.2f} | "
              f"{a['val_mAP']:.1f} / {b['val_mAP']:.1f} | {a['samples_per_s']:.0f} / {b['samples_per_s']:.0f} |")
    diffs = [r["two"]["mAP"] - r["one"]["mAP"] for r in rows]
    mean, lo, hi = t_interval(diffs) if diffs else (float("nan"),) * 3
    print(f"\npaired difference (2 - 1 processes), n = {len(diffs)}: {mean:+.2f} test mAP points, 95% t-interval "
          f"[{lo:+.2f}, {hi:+.2f}]")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "mean_diff": mean, "ci95": [lo, hi]}, indent=1))


if __name__ == "__main__":
    main()
