"""Size sweep in the manner of the paper's Tables 3-4: prune a trained model step by step to shrinking
budgets, finetuning after every level, and report mAP/R1/R5/R10 and the share of dense mAP kept.

Each method runs its own chain from the dense model: dense -> 75% -> 70% -> 60% -> 45% (the ratios of
Table 3: 101M -> 76M/70M/60M/46M), every level pruned from the previous one with `prune_to_target`
and finetuned with `graft_edge.train.finetune` (stage-2 recipe of the checkpoint's config).

    python benchmarks/prune_sweep.py --model RUN/best.pt --data DATA --finetune-epochs 2 \
        --methods structured,unstructured --json sweep.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="Trained dense checkpoint.")
    ap.add_argument("--data", type=Path, required=True, help="Dataset root (train split to finetune, query/gallery).")
    ap.add_argument("--levels", default="75%,70%,60%,45%", help="Budgets, as fractions of the dense size or counts.")
    ap.add_argument("--methods", default="structured,unstructured")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="Finetuning epochs after every level (0: prune only).")
    ap.add_argument("--control", action="store_true", help="Also finetune the dense model for as many epochs as the "
                    "whole chain gets (separates the gain of extra training from the loss of pruning).")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from graft_edge.checkpoint import load_model
    from graft_edge.compress import PruneSpec, prune_to_target, resolve_target
    from graft_edge.errors import GraftError
    from graft_edge.evaluation import evaluate_embedder
    from graft_edge.model import embedding_params
    from graft_edge.runtime.torch_backend import TorchEmbedder
    from graft_edge.train import finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense, ckpt = load_model(args.model)
    cfg = ckpt.config

    def evaluate(model) -> dict:
        model.eval()
        return evaluate_embedder(TorchEmbedder.from_model(model), args.data, batch_size=cfg.data.eval_batch_size)

    base = evaluate(dense)
    rows = [{"method": "dense", "level": "100%", "params_embedding": embedding_params(dense),
             "params_nonzero": embedding_params(dense, nonzero=True), **{k: base[k] for k in ("mAP", "R1", "R5", "R10")},
             "kept": 1.0, "seconds": 0.0}]
    print(f"dense: {rows[0]['params_embedding']:,} params, mAP {100 * base['mAP']:.2f} R1 {100 * base['R1']:.2f} "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    if args.control and args.finetune_epochs > 0:  # how much of a level's mAP is finetuning alone?
        t0 = time.perf_counter()
        ctrl = copy.deepcopy(dense)
        epochs = args.finetune_epochs * len(levels)
        _, res = finetune(ctrl, cfg, args.data, epochs)
        rows.append({"method": f"dense + {epochs} ep finetune", "level": "100%",
                     "params_embedding": embedding_params(ctrl), "params_nonzero": embedding_params(ctrl, nonzero=True),
                     **{k: float(res[k]) for k in ("mAP", "R1", "R5", "R10")}, "kept": res["mAP"] / base["mAP"],
                     "seconds": time.perf_counter() - t0})
        print(f"control: dense finetuned {epochs} epochs: mAP {100 * res['mAP']:.2f} R1 {100 * res['R1']:.2f}", flush=True)
        del ctrl
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        model = copy.deepcopy(dense)
        history: list[dict] = []
        for level in levels:
            t0 = time.perf_counter()
            # a fraction is of the DENSE size (counts of the method), not of the previous level
            target = resolve_target(level, dense, method)
            metrics: dict = {}

            def ft(m, after_step, metrics=metrics):
                if args.finetune_epochs > 0:
                    _, res = finetune(m, cfg, args.data, args.finetune_epochs, after_step=after_step)
                else:
                    res = evaluate(m)
                metrics.update(res)
                return res

            try:
                model, _, history = prune_to_target(model, target, PruneSpec(method, steps=1), finetune_fn=ft,
                                                    history=history)
            except GraftError as exc:  # below what the method can reach on this model
                print(f"{method} {level}: skipped ({exc})", flush=True)
                break
            row = {"method": method, "level": level, "params_embedding": embedding_params(model),
                   "params_nonzero": embedding_params(model, nonzero=True),
                   **{k: float(metrics[k]) for k in ("mAP", "R1", "R5", "R10")},
                   "seconds": time.perf_counter() - t0}
            row["kept"] = row["mAP"] / base["mAP"]
            rows.append(row)
            print(f"{method} {level}: {row['params_embedding']:,} params, {row['params_nonzero']:,} nonzero, "
                  f"mAP {100 * row['mAP']:.2f} R1 {100 * row['R1']:.2f} ({100 * row['kept']:.1f}% of dense mAP, "
                  f"{row['seconds']:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)

    print("\n| method | budget | params | nonzero | mAP | R1 | R5 | R10 | mAP kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['level']} | {r['params_embedding'] / 1e3:.1f}K | {r['params_nonzero'] / 1e3:.1f}K | "
              f"{100 * r['mAP']:.1f} | {100 * r['R1']:.1f} | {100 * r['R5']:.1f} | {100 * r['R10']:.1f} | "
              f"{100 * r['kept']:.1f}% |")
    result = {"model": str(args.model), "data": str(args.data), "finetune_epochs": args.finetune_epochs, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
