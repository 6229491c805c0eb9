"""Time any artefacts side by side against a reference (interleaved rounds, one process) and print the ratios.

Used for the pruned-INT8 comparison in benchmarks/README.md ("Edge speed at the limit"):

    graft-edge prune deit/dense.pt --target 60M --out deit/p60.pt
    graft-edge prune deit/p60.pt --target 46M --out deit/p46.pt
    graft-edge export deit/p60.pt --out deit/p60-exp --no-onnx --int8 dynamic --openvino int8 --calib-data syn
    python benchmarks/interleaved.py deit/dense.pt deit/exp/model.openvino-int8.xml deit/p60-exp/*.xml ... \
        --threads 1 --json pruned.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", help="the model every ratio is against (e.g. the dense checkpoint, eager)")
    ap.add_argument("models", nargs="+", help="artefacts of any format")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2, help="timed calls per model per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from graft_edge.profile.hardware import machine_info
    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    torch.set_num_threads(args.threads)
    paths = [args.reference] + [m for m in args.models if m != args.reference]
    emb = {p: load_embedder(p, threads=args.threads) for p in paths}
    inputs = {p: synthetic_batch(e.info, args.batch) for p, e in emb.items()}
    load0 = os.getloadavg()[0]
    times = interleaved_latency(emb, inputs, rounds=args.rounds, iters_per_round=args.iters, warmup=args.warmup)
    load1 = os.getloadavg()[0]
    ref = summarize(times[args.reference], args.batch)
    rows = {}
    for p, t in times.items():
        s = summarize(t, args.batch)
        rows[p] = {"params": emb[p].info.params_embedding, "precision": emb[p].info.extra.get("precision", "fp32"),
                   "ms_p50": s.per_sample_ms, "ms_min": s.min_ms / args.batch,
                   "vs_reference_p50": ref.per_sample_ms / s.per_sample_ms, "vs_reference_min": ref.min_ms / s.min_ms}
        print(f"{p:60s} {rows[p]['params'] / 1e6:7.2f}M {s.per_sample_ms:9.1f} ms (best {s.min_ms / args.batch:8.1f})  "
              f"{rows[p]['vs_reference_p50']:5.2f}x p50  {rows[p]['vs_reference_min']:5.2f}x best", flush=True)
    print(f"load average {load0:.2f} -> {load1:.2f}")
    result = {"reference": args.reference, "threads": args.threads, "batch": args.batch, "rows": rows,
              "load": [load0, load1], "machine": machine_info()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
