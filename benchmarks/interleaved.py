"""Time any artefacts side by side against a reference (interleaved rounds, one process) and print the ratios.

Used for the pruned-INT8 comparison and the fused-graph / U8S8 comparison in benchmarks/README.md
("Edge speed at the limit"):

    graft-edge prune deit/dense.pt --target 60M --out deit/p60.pt
    graft-edge prune deit/p60.pt --target 46M --out deit/p46.pt
    graft-edge export deit/p60.pt --out deit/p60-exp --no-onnx --int8 dynamic --openvino int8 --calib-data syn
    python benchmarks/interleaved.py deit/dense.pt deit/exp/model.openvino-int8.xml deit/p60-exp/*.xml ... \
        --threads 1,2 --cosine --json pruned.json

Each thread count is one interleaved pass (every artefact reloaded with that many threads). `--cosine` adds
each artefact's worst embedding cosine against the reference on the timing inputs (the reference should be
the FP32 checkpoint); for ONNX files the row also counts the fused nodes (attention, QAttention) in the file.
The load average before and after each pass is recorded: on a shared machine only ratios inside a pass mean
anything.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path


def _cosine(ref, got) -> float:
    import numpy as np

    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    num = (ref * got).sum(axis=1)
    return float((num / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)).min())


def _fused_ops(path: str) -> dict[str, int]:
    """Fused attention nodes in an ONNX file ({} for other formats or unfused graphs)."""
    if not path.endswith(".onnx"):
        return {}
    from graft_edge.export.fusion import fused_op_counts

    counts = fused_op_counts(path)
    return {k: counts[k] for k in ("MultiHeadAttention", "Attention", "QAttention") if counts.get(k)}


def one_pass(paths: list[str], threads: int, args) -> dict:
    """Load every artefact with `threads` threads, time them interleaved, return the rows of this pass."""
    import torch

    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    torch.set_num_threads(threads)
    emb = {p: load_embedder(p, threads=threads) for p in paths}
    inputs = {p: synthetic_batch(e.info, args.batch) for p, e in emb.items()}
    ref_out = emb[paths[0]].embed(inputs[paths[0]]) if args.cosine else None
    load0 = os.getloadavg()
    times = interleaved_latency(emb, inputs, rounds=args.rounds, iters_per_round=args.iters, warmup=args.warmup)
    load1 = os.getloadavg()
    ref = summarize(times[paths[0]], args.batch)
    rows = {}
    for p, t in times.items():
        s = summarize(t, args.batch)
        rows[p] = {"params": emb[p].info.params_embedding, "precision": emb[p].info.extra.get("precision", "fp32"),
                   "ms_p50": s.per_sample_ms, "ms_min": s.min_ms / args.batch,
                   "vs_reference_p50": ref.per_sample_ms / s.per_sample_ms, "vs_reference_min": ref.min_ms / s.min_ms,
                   "fused_ops": _fused_ops(p)}
        if ref_out is not None:
            rows[p]["cosine_vs_reference"] = _cosine(ref_out, emb[p].embed(inputs[paths[0]]))
        print(f"[{threads} thr] {p:60s} {rows[p]['params'] / 1e6:7.2f}M {s.per_sample_ms:9.1f} ms "
              f"(best {s.min_ms / args.batch:8.1f})  {rows[p]['vs_reference_p50']:5.2f}x p50  "
              f"{rows[p]['vs_reference_min']:5.2f}x best  cos {rows[p].get('cosine_vs_reference', float('nan')):.5f} "
              f"{rows[p]['fused_ops'] or ''}", flush=True)
    print(f"[{threads} thr] load average {load0[0]:.2f} -> {load1[0]:.2f}", flush=True)
    del emb
    gc.collect()
    return {"threads": threads, "rows": rows, "load": [list(load0), list(load1)]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", help="the model every ratio is against (e.g. the dense checkpoint, eager)")
    ap.add_argument("models", nargs="+", help="artefacts of any format")
    ap.add_argument("--threads", default="1", help="thread counts, one interleaved pass each: 1 or 1,2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2, help="timed calls per model per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cosine", action="store_true", help="also the worst cosine of each artefact vs the reference")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from graft_edge.profile.hardware import machine_info

    paths = [args.reference] + [m for m in args.models if m != args.reference]
    passes = [one_pass(paths, int(t), args) for t in str(args.threads).split(",") if t.strip()]
    result = {"reference": args.reference, "batch": args.batch, "passes": passes, "machine": machine_info()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
