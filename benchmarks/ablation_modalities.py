"""Paper Table 6 (modalities) and Table 8 (triplet token combination) on the synthetic set, in-process.

Trains the `synthetic` preset with the library API (`graft_edge.train.run_training`) on every
variant and prints one Markdown table: the untrained model, all modalities (FFD, the paper's
augmented triplet), each single modality, and all modalities with the standard FFF triplet.
Every variant sees the same data, seed and recipe; only the listed keys change.

    python benchmarks/ablation_modalities.py                       # ~10-15 min on 2 CPU cores
    python benchmarks/ablation_modalities.py --data ROOT --out DIR --set train.stage1.epochs=8
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from graft_edge.config import GraftConfig, apply_overrides, get_preset

VARIANTS: dict[str, list[str]] = {
    "all (rgb,nir,tir) FFD": [],
    "rgb only": ["model.modalities=[rgb]"],
    "nir only": ["model.modalities=[nir]"],
    "tir only": ["model.modalities=[tir]"],
    "all (rgb,nir,tir) FFF": ["train.stage1.loss.combo=FFF", "train.stage2.loss.combo=FFF"],
}
PAIRS: dict[str, list[str]] = {
    "rgb,nir": ["model.modalities=[rgb,nir]"],
    "rgb,tir": ["model.modalities=[rgb,tir]"],
    "nir,tir": ["model.modalities=[nir,tir]"],
}


def untrained_metrics(cfg: GraftConfig, data: Path) -> dict:
    """mAP/R1 of the freshly initialised model (seed = cfg.train.seed)."""
    from graft_edge.data import build_eval_loaders, build_train_loader
    from graft_edge.evaluation import evaluate_model
    from graft_edge.model import build_model

    _, _, num_ids = build_train_loader(data, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(replace(cfg.model, num_ids=num_ids))
    query, gallery = build_eval_loaders(data, cfg.model, cfg.data.eval_batch_size)
    return evaluate_model(model, query, gallery)


def train_variant(base: GraftConfig, sets: list[str], data: Path, out: Path) -> dict:
    """Train one variant from scratch into `out`; metrics of its best.pt plus steps and seconds."""
    from graft_edge.train import run_training

    cfg = apply_overrides(base, sets)
    result = run_training(cfg, data, out, overwrite=True, progress=False)
    return {**result.metrics, "steps": result.steps, "seconds": result.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="synthetic dataset root (default: write one with default size to OUT/data)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="folder for the runs and ablation.json")
    parser.add_argument("--pairs", action="store_true", help="also train the three modality pairs")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override for every variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data
    if data is None:
        from graft_edge.data.synthetic import write_synthetic

        data = args.out / "data"
        if not data.exists():
            print(write_synthetic(data).line(), flush=True)
    base = apply_overrides(get_preset("synthetic"), args.sets)
    variants = {**VARIANTS, **(PAIRS if args.pairs else {})}
    start = time.perf_counter()
    rows = {"untrained (all modalities)": untrained_metrics(base, data)}
    print(f"untrained: mAP {100 * rows['untrained (all modalities)']['mAP']:.1f}", flush=True)
    for i, (name, sets) in enumerate(variants.items()):
        rows[name] = train_variant(base, sets, data, args.out / f"run{i}")
        r = rows[name]
        print(f"{name}: mAP {100 * r['mAP']:.1f} R1 {100 * r['R1']:.1f} ({r['seconds']:.0f} s)", flush=True)
    print(f"\nsynthetic preset on {data} ({os.cpu_count()} CPUs, {time.perf_counter() - start:.0f} s in all)\n")
    print("| variant | mAP | R1 | R5 | R10 |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['mAP']:.1f} | {100 * r['R1']:.1f} | {100 * r['R5']:.1f} | {100 * r['R10']:.1f} |")
    singles = [rows[n]["mAP"] for n in ("rgb only", "nir only", "tir only")]
    all_map = rows["all (rgb,nir,tir) FFD"]["mAP"]
    print(f"\nall - best single modality: {100 * (all_map - max(singles)):+.1f} mAP points; "
          f"FFD - FFF: {100 * (all_map - rows['all (rgb,nir,tir) FFF']['mAP']):+.1f} mAP points")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps({"data": str(data), "sets": args.sets, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
