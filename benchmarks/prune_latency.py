"""PyTorch CPU latency of a dense GraFT vs the same model pruned to a budget, structured and unstructured.

Side by side in one run (round-robin, so load changes hit every variant alike), batch 1, every
modality at the model's input size; prints p50/p90/mean and the ratios to dense. Expect structured
pruning to 60M (of 102M) to run about 1.7-2x faster and unstructured pruning (zeros in dense
matrices) to run no faster at all.

    python benchmarks/prune_latency.py                      # rgbnt100, random init, --target 60M
    python benchmarks/prune_latency.py --model X.pt --target 60% --rounds 8 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="Dense checkpoint (default: a random-init rgbnt100 model).")
    ap.add_argument("--preset", default="rgbnt100", help="Preset to build when --model is not given.")
    ap.add_argument("--target", default="60M", help="Pruning target for both methods (60M, 60%%, ...).")
    ap.add_argument("--rounds", type=int, default=5, help="Round-robin rounds.")
    ap.add_argument("--iters", type=int, default=2, help="Timed calls per variant per round.")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores).")
    ap.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = ap.parse_args(argv)

    from graft_edge.checkpoint import load_model
    from graft_edge.compress import PruneSpec, get_method, prune_to_target
    from graft_edge.config import get_preset
    from graft_edge.model import build_model, embedding_params
    from graft_edge.model.arch import arch_summary
    from graft_edge.profile.hardware import machine_info
    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime.torch_backend import TorchEmbedder

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        dense, ckpt = load_model(args.model)
        cfg = ckpt.config
    else:
        cfg = get_preset(args.preset)
        cfg = replace(cfg, model=replace(cfg.model, pretrained=False))
        dense = build_model(cfg.model).eval()

    t0 = time.perf_counter()
    structured = copy.deepcopy(dense)
    structured, arch, _ = prune_to_target(structured, get_method("structured").resolve_target(args.target, structured))
    t_struct = time.perf_counter() - t0
    t0 = time.perf_counter()
    unstructured = copy.deepcopy(dense)
    unstructured, _, _ = prune_to_target(unstructured, get_method("unstructured").resolve_target(args.target, unstructured),
                                         PruneSpec("unstructured"))
    t_unstruct = time.perf_counter() - t0

    variants = {"dense": dense, "structured": structured, "unstructured": unstructured}
    embedders = {k: TorchEmbedder.from_model(m.eval()) for k, m in variants.items()}
    inputs = {k: synthetic_batch(e.info, 1) for k, e in embedders.items()}
    load_before = _load()
    samples = interleaved_latency(embedders, inputs, rounds=args.rounds, iters_per_round=args.iters,
                                  warmup=args.warmup)
    load_after = _load()

    stats = {k: summarize(v, 1) for k, v in samples.items()}
    base = stats["dense"].p50_ms
    rows = []
    for k, m in variants.items():
        s = stats[k]
        rows.append({"variant": k, "params_embedding": embedding_params(m),
                     "params_nonzero": embedding_params(m, nonzero=True), "p50_ms": s.p50_ms, "p90_ms": s.p90_ms,
                     "mean_ms": s.mean_ms, "n": s.n, "speedup_vs_dense": base / s.p50_ms})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, "
          f"{len(cfg.model.modalities)} modalities at {tuple(cfg.model.img_size)}; load avg before {load_before}, "
          f"after {load_after}")
    print(f"structured widths: {arch_summary(arch)} (pruned in {t_struct:.1f} s; unstructured in {t_unstruct:.1f} s)")
    print(f"{'variant':<13}{'params':>12}{'nonzero':>12}{'p50 ms':>10}{'p90 ms':>10}{'mean ms':>10}{'vs dense':>10}")
    for r in rows:
        print(f"{r['variant']:<13}{r['params_embedding'] / 1e6:>11.2f}M{r['params_nonzero'] / 1e6:>11.2f}M"
              f"{r['p50_ms']:>10.1f}{r['p90_ms']:>10.1f}{r['mean_ms']:>10.1f}{r['speedup_vs_dense']:>9.2f}x")
    result = {"rows": rows, "target": args.target, "arch": arch, "load_before": load_before,
              "load_after": load_after, "machine": machine_info()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
