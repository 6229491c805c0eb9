"""Size sweep in the manner of the paper's Tables 3-4, over finetuning seeds and conditions (graft_edge.workflows.sweep):
structured pruning without finetuning, with finetuning and with finetuning + distillation at equal epochs, and
unstructured pruning at the same budgets; each (condition, seed) is its own chain dense -> 80% -> 60% -> 45% -> 35%.
Reports validation and test mAP/R1/R5/R10 as mean ± sample std over the seeds, the share of dense mAP kept and
each difference from dense with its 95% interval and verdict (graft_edge.verdicts). Resumable: rerun with the same --out.

    python benchmarks/prune_sweep.py --model RUN/best.pt --data DATA --out sweep --seeds 3 --finetune-epochs 2
    python benchmarks/prune_sweep.py --model RUN0/best.pt --model RUN1/best.pt --model RUN2/best.pt --seeds 1 ...
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from graft_edge.errors import GraftError, one_line
from graft_edge.train.distill import DistillConfig
from graft_edge.verdicts import DEFAULT_MARGIN
from graft_edge.workflows.sweep import CONDITIONS, DEFAULT_CONDITIONS, DEFAULT_LEVELS, SweepSettings, run_sweeps


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, action="append", help="Trained dense checkpoint; repeat "
                    "it for the same recipe trained with other seeds (each gets its own sweep in OUT/m<i>, and the "
                    "report in OUT covers all of them: dense gets a training-seed std).")
    ap.add_argument("--data", type=Path, required=True, help="Dataset root (train split to finetune and validate, "
                    "query/gallery to test).")
    ap.add_argument("--out", type=Path, required=True, help="Folder for the chains' checkpoints, sweep.json, sweep.md.")
    ap.add_argument("--levels", default=",".join(DEFAULT_LEVELS), help="Budgets, as fractions of the dense size or "
                    "counts.")
    ap.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                    help=f"Comma-separated subset of {', '.join(CONDITIONS)}.")
    ap.add_argument("--seeds", type=int, default=3, help="Finetuning seeds (each its own chain).")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="Finetuning epochs after every level.")
    ap.add_argument("--control", action="store_true", help="Also finetune the dense model for as many epochs as a "
                    "whole chain gets (separates the gain of extra training from the loss of pruning).")
    ap.add_argument("--distill-teacher", default=DistillConfig().teacher, help="+kd condition's teacher: source "
                    "(the dense model, for every level) or previous (the model before each cut).")
    ap.add_argument("--distill-embed-weight", type=float, default=1.0, help="Weight of the embedding term (1 - cos).")
    ap.add_argument("--distill-logits-weight", type=float, default=1.0, help="Weight of the logits KL term (T^2-scaled).")
    ap.add_argument("--distill-temperature", type=float, default=4.0, help="Softmax temperature of the logits term.")
    ap.add_argument("--margin", type=float, default=100 * DEFAULT_MARGIN, help="mAP points within which a "
                    "difference counts as equivalent (its whole 95%% interval inside ±margin); the report only.")
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads.")
    ap.add_argument("--device", default="cpu", help="Finetuning device (cpu, cuda).")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip()) + (("control",) if args.control else ())
    settings = SweepSettings(levels=tuple(x.strip() for x in args.levels.split(",") if x.strip()),
                             conditions=conditions, seeds=args.seeds, finetune_epochs=args.finetune_epochs,
                             device=args.device, margin=args.margin / 100,
                             distill=DistillConfig(embed_weight=args.distill_embed_weight,
                                                   logits_weight=args.distill_logits_weight,
                                                   temperature=args.distill_temperature, teacher=args.distill_teacher))
    started = time.perf_counter()
    res = run_sweeps(args.model, args.data, args.out, settings,
                    log=lambda msg: print(f"{msg} (load {os.getloadavg()[0]:.1f})", flush=True))
    print("\n" + res.files["md"].read_text())
    print(f"{len(res.done)} chain level(s) computed, {len(res.skipped)} reused, {time.perf_counter() - started:.0f} s; "
          f"wrote {res.files['json']} and {res.files['md']}")
    return {"rows": res.rows, "seed_rows": res.seed_rows}


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except GraftError as exc:  # bad option or input: one line, exit 2
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
