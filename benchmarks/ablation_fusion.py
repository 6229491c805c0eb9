"""Paper Table 5 (fusion method) on the synthetic set: GraFT's fusion token vs vanilla CLS and average fusion.

Trains the `synthetic` preset once per `model.fusion` value (token | cls | avg) through the library
(`graft_edge.train.run_training`), same data, seed and recipe for all, and prints one Markdown table
(mAP/R1/R5/R10 of each run's best.pt, parameters, training time) plus the differences to `token`.

    python benchmarks/ablation_fusion.py --threads 1                 # ~3 x the demo's training time
    python benchmarks/ablation_fusion.py --data ROOT --out DIR --set train.stage1.epochs=8
    python benchmarks/ablation_fusion.py --quick                     # 2 + 1 epochs each: a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

FUSIONS = ("token", "cls", "avg")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="synthetic dataset root (default: write one to OUT/data)")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation_fusion"), help="folder for the runs and fusion.json")
    ap.add_argument("--fusions", default=",".join(FUSIONS), help="comma-separated subset of token,cls,avg")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every variant (repeatable)")
    ap.add_argument("--quick", action="store_true", help="2 + 1 epochs per variant (numbers mean little)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here (default OUT/fusion.json)")
    args = ap.parse_args(argv)

    from graft_edge.config import apply_overrides, get_preset
    from graft_edge.model import build_model, embedding_params
    from graft_edge.train import run_training

    if args.threads:
        torch.set_num_threads(args.threads)
    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    bad = [f for f in fusions if f not in FUSIONS]
    if bad:
        ap.error(f"unknown fusion {bad[0]!r}: expected some of {', '.join(FUSIONS)}")
    data = args.data
    if data is None:
        from graft_edge.data.synthetic import write_synthetic

        data = args.out / "data"
        if not data.exists():
            print(write_synthetic(data).line(), flush=True)
    sets = list(args.sets) + (["train.stage1.epochs=2", "train.stage2.epochs=1"] if args.quick else [])
    base = apply_overrides(get_preset("synthetic"), sets)
    rows: dict[str, dict] = {}
    start = time.perf_counter()
    for fusion in fusions:
        cfg = apply_overrides(base, [f"model.fusion={fusion}"])
        res = run_training(cfg, data, args.out / f"run-{fusion}", overwrite=True, progress=False)
        params = embedding_params(build_model(cfg.model))
        rows[fusion] = {**res.metrics, "steps": res.steps, "seconds": res.seconds, "params_embedding": params}
        r = rows[fusion]
        print(f"{fusion}: mAP {100 * r['mAP']:.1f} R1 {100 * r['R1']:.1f} ({r['seconds']:.0f} s)", flush=True)
    print(f"\nsynthetic preset on {data} ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"{time.perf_counter() - start:.0f} s in all{', --quick' if args.quick else ''})\n")
    print("| fusion | params | mAP | R1 | R5 | R10 | train s |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['params_embedding'] / 1e6:.3f}M | {100 * r['mAP']:.1f} | {100 * r['R1']:.1f} | "
              f"{100 * r['R5']:.1f} | {100 * r['R10']:.1f} | {r['seconds']:.0f} |")
    if "token" in rows:
        diffs = [f"token - {k}: {100 * (rows['token']['mAP'] - r['mAP']):+.1f} mAP points"
                 for k, r in rows.items() if k != "token"]
        if diffs:
            print("\n" + "; ".join(diffs))
    result = {"data": str(data), "sets": sets, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.json or args.out / "fusion.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
