"""Is the synthetic benchmark capacity-bound? Generate a set at a difficulty, train the `synthetic` preset on it
(one run per training seed), then prune the trained model structurally to a budget without and with finetuning,
and print dense val/test mAP, the pruned mAPs, the losses in points, seconds and the query count.

Capacity-bound means: dense test mAP 50-85, pruning to 45% without finetuning loses >= 10 points,
with the demo's finetuning (2 epochs per step, no distillation) still >= 2, seed-to-seed std of dense mAP <= 1.5.

    python benchmarks/synthetic_difficulty.py --difficulty hard --ids 160 --cameras 8 --images-per-camera 3 \\
        --train-seeds 0,1,2 --threads 1 --out /tmp/sd --json sd.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from graft_edge.config import get_preset
from graft_edge.data.difficulty import get_difficulty
from graft_edge.data.synthetic import write_synthetic
from graft_edge.train import run_training
from graft_edge.workflows.prune import PruneRequest, run_prune


def data_root(args: argparse.Namespace) -> Path:
    """Write (or reuse) the set of these sizes and difficulty under OUT/data-..."""
    diff = get_difficulty(args.difficulty, args.knob or ())
    knobs = hashlib.sha256(json.dumps(diff.record(), sort_keys=True).encode()).hexdigest()[:8]  # preset edits too
    tag = f"{diff.name.split('+')[0]}-{knobs}-{args.ids}x{args.cameras}x{args.images_per_camera}-s{args.data_seed}"
    root = args.out / f"data-{tag}"
    if not (root / "graft_dataset.json").is_file():
        s = write_synthetic(root, ids=args.ids, cameras=args.cameras, images_per_camera=args.images_per_camera,
                            seed=args.data_seed, difficulty=diff, overwrite=root.exists())
        print(s.line(), flush=True)
    return root


def one_seed(args: argparse.Namespace, data: Path, seed: int) -> dict:
    """Train with train.seed = seed, then prune to the target without and with finetuning; the row of numbers."""
    cfg = get_preset("synthetic")
    stage1 = replace(cfg.train.stage1, epochs=args.stage1_epochs or cfg.train.stage1.epochs)
    cfg = replace(cfg, train=replace(cfg.train, seed=seed, stage1=stage1))
    run_dir = args.out / f"run-{data.name}-t{seed}-m{args.max_steps or 0}-e{stage1.epochs}"
    t0 = time.perf_counter()
    res = run_training(cfg, data, run_dir, overwrite=True, max_steps=args.max_steps, progress=False)
    train_s = time.perf_counter() - t0
    row = {"seed": seed, "dense_test": 100 * res.metrics["mAP"], "dense_val": 100 * (res.metrics.get("val_mAP") or 0),
           "dense_r1": 100 * res.metrics["R1"], "train_s": train_s, "steps": res.steps,
           }
    for name, epochs in (("noft", 0), ("ft", args.finetune_epochs)):
        t0 = time.perf_counter()
        req = PruneRequest(target=args.target, method="structured", data=data, finetune_epochs=epochs,
                           distill=args.distill if epochs else None, seed_offset=0)
        pr = run_prune(res.best, args.out / f"{run_dir.name}-{name}.pt", req)
        row[name] = 100 * float(pr.new_steps[-1]["mAP"])
        row[f"{name}_s"] = time.perf_counter() - t0
        row[f"{name}_steps"] = len(pr.new_steps)
    row["loss_noft"], row["loss_ft"] = row["dense_test"] - row["noft"], row["dense_test"] - row["ft"]
    print(f"  seed {seed}: dense test {row['dense_test']:.1f} val {row['dense_val']:.1f} | {args.target} no-ft "
          f"{row['noft']:.1f} ({-row['loss_noft']:+.1f}) ft {row['ft']:.1f} ({-row['loss_ft']:+.1f}) | train "
          f"{train_s:.0f} s ({res.steps} steps), ft {row['ft_s']:.0f} s | load {os.getloadavg()[0]:.1f}", flush=True)
    return row


def summarise(rows: list[dict]) -> dict:
    """Mean and (sample) std of every numeric column over the seeds."""
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows if isinstance(r[key], (int, float))]
        if vals and key != "seed":
            out[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--difficulty", default="hard", help="Preset of graft_edge.data.difficulty.PRESETS.")
    ap.add_argument("--knob", action="append", help="KEY=VALUE change of one difficulty knob (repeatable).")
    ap.add_argument("--ids", type=int, default=160, help="Identities in total (half train, half test).")
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--images-per-camera", type=int, default=3)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--train-seeds", default="0", help="Comma-separated training seeds (train.seed).")
    ap.add_argument("--max-steps", type=int, default=None, help="Cap on optimizer steps per training stage.")
    ap.add_argument("--stage1-epochs", type=int, default=None, help="Stage-1 epochs (default: the preset's).")
    ap.add_argument("--target", default="45%", help="Structured pruning budget (fraction of the dense size).")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="Finetuning epochs after every pruning step.")
    ap.add_argument("--distill", action="store_true", help="Distil during finetuning (default: plain finetuning).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="Work folder (data, runs, pruned checkpoints).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = data_root(args)
    meta = json.loads((data / "graft_dataset.json").read_text())
    print(f"{data.name}: {meta['counts']} images, {meta['cue_values']} values per cue", flush=True)
    rows = [one_seed(args, data, int(s)) for s in args.train_seeds.split(",") if s.strip()]
    summary = summarise(rows)
    line = "  ".join(f"{k} {v['mean']:.1f}+-{v['std']:.1f}" for k, v in summary.items()
                     if k in ("dense_test", "dense_val", "noft", "ft", "loss_noft", "loss_ft", "train_s"))
    print(f"SUMMARY {data.name} max_steps={args.max_steps}: {line}  queries {meta['counts']['query']}", flush=True)
    result = {"data": str(data), "dataset": {k: meta[k] for k in ("counts", "cue_values", "difficulty")},
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rows": rows, "summary": summary, "load": os.getloadavg()[0]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
