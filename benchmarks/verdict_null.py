"""How often each rule for "better/worse than dense" is wrong: simulated experiments with a known true difference.

Every experiment draws n per-seed values per side (normal, sd 1 in units of the seed spread); the true difference is 0
(null: any better/worse is false) or `effect` sds (a real difference: "better/worse" is what a rule should say).
Rules compared:
    verdicts (paired)   graft_edge.verdicts.paired on the n per-seed differences (95% t-interval), margin 0
    verdicts (Welch)    graft_edge.verdicts.welch on two independent samples of n
    old paired rule     |mean diff| > sd of the diffs (the rule the reports used before: |t| > sqrt(n))
    old unpaired rule   |mean_a - mean_b| > sqrt(sd_a^2 + sd_b^2) (sample sds, not standard errors)
    bootstrap (seeds)   95% percentile interval of the mean of the n differences resampled with replacement

    python benchmarks/verdict_null.py --experiments 2000 --seeds 3 --effect 1 --json verdict_null.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from graft_edge.verdicts import EQUIVALENT, INCONCLUSIVE, paired, welch


def _called(verdict: str) -> bool:
    return verdict not in (INCONCLUSIVE, EQUIVALENT)


def rates(experiments: int, n: int, effect: float, seed: int = 0, resamples: int = 2000) -> dict[str, float]:
    """Share of experiments in which each rule says better or worse, at true difference `effect` (sds)."""
    rng = np.random.default_rng([seed, n, int(1000 * effect)])
    a = rng.normal(effect, 1.0, size=(experiments, n))
    b = rng.normal(0.0, 1.0, size=(experiments, n))
    d = rng.normal(effect, 1.0, size=(experiments, n))  # paired differences with sd 1
    boot_idx = rng.integers(0, n, size=(resamples, n))
    boot = []
    for row in d:
        means = np.sort(row[boot_idx].mean(axis=1))
        lo, hi = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
        boot.append(lo > 0 or hi < 0)
    return {
        "verdicts (paired)": float(np.mean([_called(paired(row, margin=0.0).verdict) for row in d])),
        "verdicts (Welch)": float(np.mean([_called(welch(x, y, margin=0.0).verdict) for x, y in zip(a, b)])),
        "old paired rule": float(np.mean(np.abs(d.mean(1)) > d.std(1, ddof=1))),
        "old unpaired rule": float(np.mean(np.abs(a.mean(1) - b.mean(1))
                                           > np.sqrt(a.var(1, ddof=1) + b.var(1, ddof=1)))),
        "bootstrap (seeds)": float(np.mean(boot)),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=2000, help="Simulated experiments per setting.")
    ap.add_argument("--seeds", type=int, default=3, help="Seeds per side (n).")
    ap.add_argument("--effect", type=float, default=1.0, help="True difference of the power rows, in seed sds.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the rates here.")
    args = ap.parse_args(argv)
    out = {"experiments": args.experiments, "seeds": args.seeds, "effect_sd": args.effect,
           "null": rates(args.experiments, args.seeds, 0.0), "power": rates(args.experiments, args.seeds, args.effect)}
    se = 1 / math.sqrt(args.experiments)
    print(f"{args.experiments} experiments, n = {args.seeds} seeds per side (rates ± {100 * 0.5 * se:.1f} points at 50%)")
    print(f"| rule | false better/worse (true difference 0) | better/worse at a true {args.effect:g} sd |")
    print("|---|---:|---:|")
    for rule in out["null"]:
        print(f"| {rule} | {100 * out['null'][rule]:.1f}% | {100 * out['power'][rule]:.1f}% |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
