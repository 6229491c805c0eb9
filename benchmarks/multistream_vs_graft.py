"""GraFT vs the multi-stream baseline (one ViT per modality): parameters, FLOPs, mAP and latency side by side.

Synthetic set: trains the `synthetic` preset with model.fusion=token and =multistream (same data, recipe and
seeds), reports embedding parameters, val/test mAP of each best.pt, then times both (PyTorch eager and ONNX
Runtime FP32, batch 1) round-robin in this process. Paper size: the `rgbnt100` architecture (DeiT-B) with
random weights, both fusions, parameters, FLOPs and eager PyTorch latency at batch 1, timed round-robin.

    python benchmarks/multistream_vs_graft.py --threads 1                   # seed 0, both parts
    python benchmarks/multistream_vs_graft.py --skip-synthetic --rounds 3   # paper size only
    python benchmarks/multistream_vs_graft.py --quick                       # 2 + 1 epochs: a smoke test
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

FUSIONS = ("token", "multistream")


def _time(embedders: dict, rounds: int, iters: int) -> dict:
    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize

    first = next(iter(embedders.values()))
    inputs = synthetic_batch(first.info, 1)
    times = interleaved_latency(embedders, {k: inputs for k in embedders}, rounds=rounds, iters_per_round=iters)
    return {k: summarize(v, 1).to_dict() for k, v in times.items()}


def synthetic_part(args) -> list[dict]:
    from graft_edge.config import apply_overrides, get_preset
    from graft_edge.data.synthetic import write_synthetic
    from graft_edge.export.pipeline import ExportOptions, export_model
    from graft_edge.model import embedding_params
    from graft_edge.profile.flops import model_flops_per_sample
    from graft_edge.runtime import load_embedder
    from graft_edge.train import run_training

    data = args.data or args.out / "data"
    if not data.exists():
        print(write_synthetic(data).line(), flush=True)
    sets = list(args.sets) + (["train.stage1.epochs=2", "train.stage2.epochs=1"] if args.quick else [])
    rows, embedders = [], {}
    for fusion in args.fusions:
        cfg = apply_overrides(get_preset("synthetic"), [*sets, f"model.fusion={fusion}"])
        runs = []
        for seed in args.seeds:
            res = run_training(replace(cfg, train=replace(cfg.train, seed=seed)), data,
                               args.out / f"{fusion}-seed{seed}", overwrite=True, progress=False)
            runs.append(res)
            print(f"  {fusion} seed {seed}: val mAP {100 * res.metrics['val_mAP']:.2f}  test mAP "
                  f"{100 * res.metrics['mAP']:.2f}  ({res.seconds:.0f} s)", flush=True)
        best = runs[0].best
        exported = export_model(best, args.out / f"{fusion}-onnx", ExportOptions())
        embedders[f"{fusion}/torch"] = load_embedder(best, threads=args.threads)
        embedders[f"{fusion}/onnx"] = load_embedder(exported.get("onnx-fp32").path, threads=args.threads)
        model = embedders[f"{fusion}/torch"].model
        rows.append({"fusion": fusion, "params_embedding": embedding_params(model),
                     "gflops": model_flops_per_sample(model) / 1e9,
                     "val_mAP": [r.metrics["val_mAP"] for r in runs], "test_mAP": [r.metrics["mAP"] for r in runs],
                     "train_s": [r.seconds for r in runs]})
    stats = _time(embedders, args.rounds, args.iters)
    for row in rows:
        row["ms_torch"] = stats[f"{row['fusion']}/torch"]["p50_ms"]
        row["ms_onnx"] = stats[f"{row['fusion']}/onnx"]["p50_ms"]
    return rows


def paper_part(args) -> list[dict]:
    from graft_edge.config import get_preset
    from graft_edge.model import build_model, embedding_params
    from graft_edge.profile.flops import model_flops_per_sample
    from graft_edge.runtime.torch_backend import TorchEmbedder

    base = get_preset("rgbnt100")
    embedders, rows = {}, []
    for fusion in FUSIONS:
        torch.manual_seed(0)
        model = build_model(replace(base.model, fusion=fusion, pretrained=False)).eval()
        rows.append({"fusion": fusion, "params_embedding": embedding_params(model),
                     "gflops": model_flops_per_sample(model, batch=1) / 1e9})
        embedders[fusion] = TorchEmbedder.from_model(model, device="cpu")
        print(f"  rgbnt100 {fusion}: {rows[-1]['params_embedding'] / 1e6:.1f}M parameters", flush=True)
    stats = _time(embedders, args.rounds, args.iters)
    for row in rows:
        row["ms_torch"] = stats[row["fusion"]]["p50_ms"]
        row["ms_torch_min"] = stats[row["fusion"]]["min_ms"]
    return rows


def _pct(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f}" + (f" +- {100 * std:.1f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="synthetic dataset root (default: write one to OUT/data)")
    ap.add_argument("--out", type=Path, default=Path("runs/multistream_vs_graft"))
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--fusions", type=lambda s: s.split(","), default=list(FUSIONS), help="synthetic part: token,multistream")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    from graft_edge.fileio import write_json
    from graft_edge.profile.hardware import machine_info

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report: dict = {"machine": machine_info(), "threads": torch.get_num_threads()}
    if not args.skip_synthetic:
        report["synthetic"] = synthetic_part(args)
        print("\n| synthetic | params | GFLOPs/sample | val mAP | test mAP | eager ms (b1) | ORT FP32 ms (b1) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in report["synthetic"]:
            print(f"| {r['fusion']} | {r['params_embedding'] / 1e3:.1f}K | {r['gflops']:.3f} | {_pct(r['val_mAP'])} | "
                  f"{_pct(r['test_mAP'])} | {r['ms_torch']:.2f} | {r['ms_onnx']:.2f} |")
    if not args.skip_paper:
        report["paper"] = paper_part(args)
        print("\n| rgbnt100 (DeiT-B, random weights) | params | GFLOPs/sample | eager ms (b1, p50) |\n|---|---:|---:|---:|")
        for r in report["paper"]:
            print(f"| {r['fusion']} | {r['params_embedding'] / 1e6:.1f}M | {r['gflops']:.1f} | {r['ms_torch']:.1f} |")
    report["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "multistream_vs_graft.json", report)
    return report


if __name__ == "__main__":
    main()
