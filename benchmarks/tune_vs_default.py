"""Tuned vs default hyperparameters on the synthetic set: validation and test mAP, mean +- std over seeds.

1. trains the `synthetic` preset with its default recipe once per seed;
2. runs `graft-edge tune` (the library's `run_tune`) over the stage-1/2 learning rates, stage-1 weight decay
   and beta1 (ranges suited to the from-scratch tiny ViT; the authors' defaults are for a pretrained DeiT-B),
   objective = validation mAP (held-out training ids), median pruner;
3. retrains the best trial's config once per seed (the study's best value is optimistic: it was selected).
The test split is only reported. Prints a Markdown table and writes OUT/tune_vs_default.json.

    python benchmarks/tune_vs_default.py --threads 1                    # 8 trials, seeds 0,1
    python benchmarks/tune_vs_default.py --quick                        # 2 + 1 epochs, 2 trials: a smoke test
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

SPACE = ("train.stage1.lr=1e-3:1.5e-2:log", "train.stage1.weight_decay=1e-3:0.2:log", "train.stage1.betas.0=0.7:0.95",
         "train.stage2.lr=1e-4:2e-3:log")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} +- {100 * std:.1f}"


def _train(cfg, data: Path, out: Path, seeds: list[int]) -> list[dict]:
    from graft_edge.train import run_training

    rows = []
    for seed in seeds:
        run = replace(cfg, train=replace(cfg.train, seed=seed))
        res = run_training(run, data, out / f"seed{seed}", overwrite=True, progress=False)
        rows.append({"seed": seed, **res.metrics, "seconds": res.seconds})
        print(f"  {out.name} seed {seed}: val mAP {100 * res.metrics['val_mAP']:.2f}  test mAP "
              f"{100 * res.metrics['mAP']:.2f}  ({res.seconds:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="synthetic dataset root (default: write one to OUT/data)")
    ap.add_argument("--out", type=Path, default=Path("runs/tune_vs_default"))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds for the default and tuned runs")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="base config override (repeatable)")
    ap.add_argument("--quick", action="store_true", help="2 + 1 epochs, 2 trials (numbers mean little)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from graft_edge.config import apply_overrides, config_from_dict, get_preset
    from graft_edge.data.synthetic import write_synthetic
    from graft_edge.fileio import read_yaml, write_json
    from graft_edge.workflows.tune import TuneSettings, run_tune
    from graft_edge.workflows.tune_space import TuneConfig, parse_param

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    data = args.data or args.out / "data"
    if not data.exists():
        print(write_synthetic(data).line(), flush=True)
    sets = list(args.sets) + (["train.stage1.epochs=2", "train.stage2.epochs=1"] if args.quick else [])
    base = apply_overrides(get_preset("synthetic"), sets)
    trials = 2 if args.quick else args.trials
    start = time.perf_counter()
    print("default recipe:", flush=True)
    default = _train(base, data, args.out / "default", seeds)
    print(f"tuning ({trials} trials):", flush=True)
    tune = TuneConfig(space=tuple(parse_param(p) for p in SPACE), pruner="median")
    result = run_tune(base, tune, data, TuneSettings(out=args.out / "tune", trials=trials, sampler_seed=0),
                      log=lambda line: print("  " + line, flush=True))
    tuned_cfg = config_from_dict(read_yaml(result.best_config))
    print(f"tuned recipe (trial {result.best_number}, val mAP {100 * result.best_value:.2f} in the study):", flush=True)
    tuned = _train(tuned_cfg, data, args.out / "tuned", seeds)
    report = {"seeds": seeds, "trials": trials, "space": list(SPACE), "best_trial": result.best_number,
              "best_params": result.best_params, "study_best_val_mAP": result.best_value, "states": result.counts,
              "default": default, "tuned": tuned, "seconds": time.perf_counter() - start}
    write_json(args.out / "tune_vs_default.json", report)
    print("\n| recipe | val mAP (mean +- std) | test mAP (mean +- std) | per seed val / test |\n|---|---:|---:|---|")
    for name, rows in (("default", default), ("tuned", tuned)):
        per = ", ".join(f"{100 * r['val_mAP']:.1f} / {100 * r['mAP']:.1f}" for r in rows)
        print(f"| {name} | {_mean_std([r['val_mAP'] for r in rows])} | {_mean_std([r['mAP'] for r in rows])} | {per} |")
    print(f"\nbest params: {json.dumps(result.best_params)}; trial states: {result.counts}; "
          f"{report['seconds'] / 60:.1f} min")
    return report


if __name__ == "__main__":
    main()
