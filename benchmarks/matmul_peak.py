"""Latency as a share of this CPU's measured matmul rate (a roofline-style yardstick).

Measures square-GEMM GFLOP/s with torch (fp32 and bf16), counts each model's FLOPs per sample with
torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention; element-wise work is not
counted, so the shares are lower bounds), times PyTorch eager and ONNX Runtime FP32 / INT8 side by side
(interleaved rounds), and reports achieved GFLOP/s and % of the fp32 GEMM peak.  INT8 and bf16 can pass
100% of the fp32 peak: that headroom is the point of lower precision.

    python benchmarks/matmul_peak.py                     # synthetic (batch 1, 32) + rgbnt100 (DeiT-B, random init, batch 1)
    python benchmarks/matmul_peak.py --quick             # synthetic only, short runs
    python benchmarks/matmul_peak.py --models synthetic --batch 64 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def export_onnx_variants(ckpt: Path, out: Path, formats: list[str]) -> dict[str, Path]:
    """ONNX FP32 (+ INT8 dynamic) of a checkpoint through the export library; {} when export is unavailable."""
    wanted = [f for f in formats if f in ("onnx", "int8")]
    if not wanted:
        return {}
    try:
        from graft_edge.export import ExportOptions, export_model
    except ImportError as exc:  # pragma: no cover - the export package is part of graft-edge
        print(f"  (export unavailable: {exc}; timing PyTorch only)", file=sys.stderr)
        return {}
    res = export_model(ckpt, out, ExportOptions(int8=("dynamic",) if "int8" in wanted else ()), raise_on_failure=False)
    files = {}
    for fmt, kind in (("onnx", "onnx-fp32"), ("int8", "onnx-int8-dynamic")):
        art = res.get(kind)
        if fmt in wanted and art is not None and art.status == "ok":
            files[fmt] = art.path
    return files


def measure_model(preset: str, batches: list[int], formats: list[str], peak: dict, args: argparse.Namespace,
                  work: Path) -> list[dict]:
    import torch

    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.config import get_preset
    from graft_edge.model import build_model, embedding_params
    from graft_edge.profile.flops import model_flops_per_sample, share_of_peak
    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    cfg = get_preset(preset)
    cfg = replace(cfg, model=replace(cfg.model, pretrained=False))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    flops = model_flops_per_sample(model)
    ckpt = work / f"{preset}.pt"
    save_checkpoint(ckpt, model, cfg)
    print(f"{preset}: {embedding_params(model) / 1e6:.2f}M params, {flops / 1e9:.3f} GFLOP/sample", flush=True)
    paths = {"torch": ckpt, **export_onnx_variants(ckpt, work / f"{preset}-export", formats)}
    embedders = {k: load_embedder(p, threads=args.threads) for k, p in paths.items() if k in formats}
    rows = []
    for b in batches:
        inputs = {k: synthetic_batch(e.info, b) for k, e in embedders.items()}
        load0 = _load()
        times = interleaved_latency(embedders, inputs, rounds=args.rounds, iters_per_round=args.iters,
                                    warmup=args.warmup)
        load1 = _load()
        ref = summarize(times["torch"], b)
        for fmt, t in times.items():
            s = summarize(t, b)
            ms = s.per_sample_ms
            row = {"model": preset, "format": fmt, "batch": b, "gflop_per_sample": flops / 1e9,
                   "ms_per_sample_p50": ms, "ms_per_sample_min": s.min_ms / b,
                   "achieved_gflops": flops / (ms / 1000) / 1e9,
                   "pct_fp32_peak": 100 * share_of_peak(flops, ms, peak["fp32"]["gflops_best"]),
                   "pct_fp32_peak_best_call": 100 * share_of_peak(flops, s.min_ms / b, peak["fp32"]["gflops_best"]),
                   "speedup_vs_eager": ref.per_sample_ms / ms, "load": [load0, load1]}
            rows.append(row)
            print(f"  batch {b:3d} {fmt:6s} {ms:10.3f} ms/sample  {row['achieved_gflops']:7.1f} GFLOP/s  "
                  f"{row['pct_fp32_peak']:5.1f}% of fp32 peak (best call {row['pct_fp32_peak_best_call']:5.1f}%)  "
                  f"{row['speedup_vs_eager']:.2f}x vs eager", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="synthetic model only, smaller GEMM, fewer rounds")
    ap.add_argument("--models", default=None, help="comma-separated presets (default synthetic,rgbnt100; --quick: synthetic)")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1,32 for synthetic, 1 for the "
                    "DeiT-B presets; --quick: 32)")
    ap.add_argument("--formats", default="torch,onnx,int8", help="torch, onnx (ORT FP32), int8 (ORT dynamic)")
    ap.add_argument("--gemm-n", type=int, default=None, help="GEMM size n (n x n @ n x n; default 2048, --quick 1024)")
    ap.add_argument("--gemm-seconds", type=float, default=None, help="time per GEMM dtype (default 3 s, --quick 1 s)")
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and ONNX Runtime (default: all cores)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --quick 2)")
    ap.add_argument("--iters", type=int, default=2, help="timed calls per variant per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where checkpoints and ONNX files go (default: a temp folder)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    models = (args.models or ("synthetic" if args.quick else "synthetic,rgbnt100")).split(",")

    def batches_for(model: str) -> list[int]:
        text = args.batch or ("32" if args.quick else ("1,32" if model == "synthetic" else "1"))
        return [int(b) for b in text.split(",")]

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if "torch" not in formats:
        formats.insert(0, "torch")
    args.rounds = args.rounds or (2 if args.quick else 5)

    import torch

    from graft_edge.profile.flops import matmul_gflops
    from graft_edge.profile.hardware import machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.gemm_n or (1024 if args.quick else 2048)
    secs = args.gemm_seconds or (1.0 if args.quick else 3.0)
    peak = {}
    for dt in ("fp32", "bf16"):
        peak[dt] = matmul_gflops(dt, n=n, seconds=secs, threads=args.threads)
        print(f"GEMM {dt} {n}x{n}: best {peak[dt]['gflops_best']:.1f} GFLOP/s, median {peak[dt]['gflops_median']:.1f} "
              f"({peak[dt]['threads']} threads, load {_load()})", flush=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="matmul-peak-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in models:
        rows += measure_model(m.strip(), batches_for(m.strip()), formats, peak, args, work)
    result = {"peak": peak, "rows": rows, "machine": machine_info()}
    print(f"bf16 / fp32 GEMM: {peak['bf16']['gflops_best'] / peak['fp32']['gflops_best']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
