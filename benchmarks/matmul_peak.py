"""Latency against this CPU's GEMM peaks, per precision: the roofline of every runtime graft-edge ships.

Measures square-GEMM peaks for fp32 (torch, OpenVINO), bf16 (torch, OpenVINO) and INT8 (ONNX Runtime
MatMulInteger u8 x s8, OpenVINO as NNCF quantises a MatMul) with `graft_edge.profile.peaks`; counts each
model's FLOPs once (torch FlopCounterMode: matmuls, attention; element-wise work not counted, so shares are
lower bounds); exports the model (ONNX FP32 + INT8 dynamic, OpenVINO FP32 / bf16 / NNCF INT8); then, for
each thread count, times every variant side by side (interleaved rounds) and reports per-sample ms,
speed-up vs eager FP32, cosine vs eager FP32, achieved GFLOP/s and the share of the peak of its own
precision. The load average before and after each pass is recorded (the numbers mean little on a busy box;
the ratios inside one pass still do).

    python benchmarks/matmul_peak.py                                   # synthetic + rgbnt100 (DeiT-B x 3, random init)
    python benchmarks/matmul_peak.py --quick                           # synthetic only, short runs
    python benchmarks/matmul_peak.py --models rgbnt100 --threads 1,2 --calib-data syn --export-dir deit/exp
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ALL_FORMATS = "torch,torch-bf16,onnx,int8,openvino,openvino-bf16,openvino-int8"
FILES = {"onnx": "model.onnx", "int8": "model.int8-dynamic.onnx", "openvino": "model.openvino.xml",
         "openvino-bf16": "model.openvino-bf16.xml", "openvino-int8": "model.openvino-int8.xml"}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def export_variants(ckpt: Path, out: Path, formats: list[str], calib_data: str | None) -> dict[str, Path]:
    """The exported files of `formats` in OUT (reused when already there, exported otherwise)."""
    from graft_edge.cpu import has_bf16
    from graft_edge.export import ExportOptions, export_model

    wanted = [f for f in formats if f in FILES and (f != "openvino-bf16" or has_bf16())
              and (f != "openvino-int8" or calib_data)]
    missing = [f for f in wanted if not (out / FILES[f]).is_file()]
    if missing:
        opts = ExportOptions(formats=tuple(missing), calib_data=calib_data, calib_samples=32)
        export_model(ckpt, out, opts, log=lambda m: print("  export:", m, flush=True), raise_on_failure=False)
    return {f: out / FILES[f] for f in wanted if (out / FILES[f]).is_file()}


def _cosine(a, b) -> float:
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def time_pass(paths: dict[str, Path], threads: int, flops: int, peaks: dict, args, model: str, batch: int) -> list:
    """One interleaved pass over every variant at `threads`: rows with ms, speed-up, cosine, roofline."""
    import torch

    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.peaks import roofline
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    torch.set_num_threads(threads)
    embedders = {k: load_embedder(p, threads=threads, dtype="bf16" if k == "torch-bf16" else "fp32")
                 for k, p in paths.items()}
    inputs = {k: synthetic_batch(e.info, batch) for k, e in embedders.items()}
    ref = embedders["torch"].embed(inputs["torch"])
    cos = {k: _cosine(e.embed(inputs["torch"]), ref) for k, e in embedders.items()}
    load0 = _load()
    times = interleaved_latency(embedders, inputs, rounds=args.rounds, iters_per_round=args.iters, warmup=args.warmup)
    load1 = _load()
    eager = summarize(times["torch"], batch).per_sample_ms
    rows = []
    for k, t in times.items():
        s = summarize(t, batch)
        precision = str(embedders[k].info.extra.get("precision") or "fp32")
        roof = roofline(flops, s.per_sample_ms, precision, peaks)
        row = {"model": model, "format": k, "threads": threads, "batch": batch, "precision": precision,
               "ms_per_sample_p50": s.per_sample_ms, "ms_per_sample_min": s.min_ms / batch,
               "speedup_vs_eager": eager / s.per_sample_ms, "cosine_vs_eager_fp32": cos[k], **roof,
               "load": [load0, load1]}
        rows.append(row)
        share = f"{100 * roof['share_of_peak']:5.1f}% of {roof['peak_precision']} peak" if roof["share_of_peak"] else ""
        print(f"  {threads} thr b{batch} {k:14s} {s.per_sample_ms:9.2f} ms  {row['speedup_vs_eager']:5.2f}x eager  "
              f"cos {cos[k]:.6f}  {roof['achieved_gflops']:7.1f} GFLOP/s {share}  (load {load0}->{load1})", flush=True)
    del embedders
    return rows


def measure_model(preset: str, batch: int, formats: list[str], peaks_by_threads: dict, args, work: Path) -> list:
    import torch

    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.config import get_preset
    from graft_edge.model import build_model, embedding_params
    from graft_edge.model.flops import model_flops_per_sample

    export_dir = Path(args.export_dir) if args.export_dir else work / f"{preset}-export"
    ckpt = export_dir.parent / f"{preset}.pt" if args.export_dir else work / f"{preset}.pt"
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        cfg = get_preset(preset)
        cfg = replace(cfg, model=replace(cfg.model, pretrained=False))
        torch.manual_seed(0)
        save_checkpoint(ckpt, build_model(cfg.model).eval(), cfg)
    from graft_edge.checkpoint import load_model

    model = load_model(ckpt)[0].eval()
    flops = model_flops_per_sample(model)
    print(f"{preset}: {embedding_params(model) / 1e6:.2f}M params, {flops / 1e9:.3f} GFLOP/sample", flush=True)
    del model
    paths = {"torch": ckpt, **({"torch-bf16": ckpt} if "torch-bf16" in formats else {}),
             **export_variants(ckpt, export_dir, formats, args.calib_data)}
    rows = []
    for threads in args.thread_list:
        rows += time_pass(paths, threads, flops, peaks_by_threads[threads], args, preset, batch)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="synthetic model only, smaller GEMM, fewer rounds")
    ap.add_argument("--models", default=None, help="comma-separated presets (default synthetic,rgbnt100)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (samples per call)")
    ap.add_argument("--formats", default=ALL_FORMATS, help=f"variants to time (default {ALL_FORMATS})")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, one interleaved pass each")
    ap.add_argument("--gemm-n", type=int, default=None, help="GEMM size n (default 2048, --quick 1024)")
    ap.add_argument("--gemm-seconds", type=float, default=None, help="time per GEMM (default 2 s, --quick 0.5 s)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --quick 2)")
    ap.add_argument("--iters", type=int, default=2, help="timed calls per variant per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calib-data", default=None, help="dataset root calibrating OpenVINO INT8 (none: no NNCF INT8)")
    ap.add_argument("--checkpoint", default=None, help="time this checkpoint instead of a random-init preset")
    ap.add_argument("--export-dir", default=None, help="reuse / write the exported files here (one model only)")
    ap.add_argument("--workdir", default=None, help="where checkpoints and exports go (default: a temp folder)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    models = (args.models or ("synthetic" if args.quick else "synthetic,rgbnt100")).split(",")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    formats = ["torch"] + [f for f in formats if f != "torch"]
    args.thread_list = [int(t) for t in args.threads.split(",")]
    args.rounds = args.rounds or (2 if args.quick else 5)

    from graft_edge.profile.hardware import machine_info
    from graft_edge.profile.peaks import measure_peaks

    n = args.gemm_n or (1024 if args.quick else 2048)
    secs = args.gemm_seconds or (0.5 if args.quick else 2.0)
    peaks = {}
    for t in args.thread_list:
        peaks[t] = measure_peaks(threads=t, n=n, seconds=secs)
        print(f"GEMM peaks {n}x{n}, {t} thread(s), load {peaks[t]['loadavg']}: " + ", ".join(
            f"{p} {peaks[t][p]['gflops']} ({peaks[t][p]['by_runtime']})" for p in ("fp32", "bf16", "int8")),
            flush=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="matmul-peak-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in models:
        rows += measure_model(m.strip(), args.batch, formats, peaks, args, work)
    result = {"peaks": {str(t): p for t, p in peaks.items()}, "rows": rows, "machine": machine_info()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
