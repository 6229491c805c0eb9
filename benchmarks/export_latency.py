"""Export latency benchmark: PyTorch eager vs ONNX Runtime FP32 vs INT8 dynamic vs INT8 static, side by side.

One run, this machine, batch 1 (configurable), every variant timed round-robin (`interleaved_latency`)
so that load from other processes hits all of them alike; the ratios are what to quote.

    python benchmarks/export_latency.py                       # dense rgbnt100 (random init) + a 60M structured prune
    python benchmarks/export_latency.py --model run/best.pt --calib-data data/ --no-pruned
    python benchmarks/export_latency.py --json results.json --workdir /tmp/bench

Models: `--model` (default: `graft-edge init rgbnt100 --no-pretrained`), and unless --no-pruned a
structured prune of it to --pruned-target (`graft-edge prune`, when that command is available).
Static INT8 calibrates on --calib-data (default: a small synthetic set written by graft_edge.data).
What it answers: how much faster ONNX Runtime FP32 is than eager, and INT8 than ORT FP32.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_model(workdir: Path, model: str | None) -> Path:
    if model:
        return Path(model)
    path = workdir / "rgbnt100.pt"
    if not path.exists():
        from graft_edge.checkpoint import save_checkpoint
        from graft_edge.config import get_preset
        from graft_edge.model import build_model

        cfg = get_preset("rgbnt100")
        from dataclasses import replace

        cfg = replace(cfg, model=replace(cfg.model, pretrained=False))
        save_checkpoint(path, build_model(cfg.model, pretrained=False), cfg)
    return path


def ensure_pruned(workdir: Path, dense: Path, target: str) -> Path | None:
    path = workdir / f"pruned-{target}.pt"
    if path.exists():
        return path
    cmd = [sys.executable, "-m", "graft_edge", "prune", str(dense), "--target", target, "--method", "structured", "--out", str(path)]
    _log("pruning: " + " ".join(cmd[2:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        _log(f"prune unavailable or failed ({(proc.stderr or proc.stdout).strip().splitlines()[-1:]}); skipping the pruned model")
        return None
    return path


def ensure_calib(workdir: Path, calib: str | None, modalities) -> Path:
    if calib:
        return Path(calib)
    path = workdir / "calib-synthetic"
    if not path.exists():
        from graft_edge.data.synthetic import write_synthetic

        write_synthetic(path, ids=16, cameras=4, modalities=modalities, images_per_camera=2)
    return path


def export_variants(ckpt: Path, out: Path, calib: Path, samples: int) -> dict[str, Path]:
    from graft_edge.export.pipeline import ExportOptions, export_model

    names = {"onnx-fp32": out / "model.onnx", "onnx-int8-dynamic": out / "model.int8-dynamic.onnx",
             "onnx-int8-static": out / "model.int8-static.onnx"}
    if not all(p.exists() for p in names.values()):
        t = time.perf_counter()
        result = export_model(ckpt, out, ExportOptions(formats=("onnx", "int8", "int8-static"), calib_data=calib, calib_samples=samples),
                              log=_log)
        _log(f"export of {ckpt.name}: {time.perf_counter() - t:.0f} s")
        for art in result.artefacts:
            p = art.parity
            _log(f"  {art.path.name}: {art.size_bytes / 1e6:.1f} MB, max|diff| {p['max_abs_diff']:.2e}, "
                 f"min cos {p['min_cosine']:.5f}, mean cos {p['mean_cosine']:.5f}")
    return names


def bench_model(label: str, ckpt: Path, files: dict[str, Path], batch: int, threads: int, rounds: int, iters: int) -> dict:
    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    embedders = {"pytorch-eager": load_embedder(ckpt, threads=threads)}
    for kind, path in files.items():
        embedders[kind.replace("onnx-", "ort-")] = load_embedder(path, threads=threads)
    inputs = synthetic_batch(embedders["pytorch-eager"].info, batch)
    _log(f"timing {label}: {', '.join(embedders)} at batch {batch}, {threads} threads, {rounds} rounds x {iters}")
    times = interleaved_latency(embedders, {k: inputs for k in embedders}, rounds=rounds, iters_per_round=iters, warmup=2)
    stats = {k: summarize(v, batch).to_dict() for k, v in times.items()}
    p50 = {k: s["p50_ms"] for k, s in stats.items()}
    ratios = {
        "ort_fp32_vs_eager": p50["pytorch-eager"] / p50["ort-fp32"],
        "int8_dynamic_vs_ort_fp32": p50["ort-fp32"] / p50["ort-int8-dynamic"],
        "int8_static_vs_ort_fp32": p50["ort-fp32"] / p50["ort-int8-static"],
        "int8_static_vs_eager": p50["pytorch-eager"] / p50["ort-int8-static"],
    }
    info = embedders["pytorch-eager"].info
    return {"label": label, "checkpoint": str(ckpt), "params_embedding": info.params_embedding, "batch": batch,
            "threads": threads, "stats": stats, "ratios": ratios,
            "sizes_mb": {k: sum(f.stat().st_size for f in [p] + ([p.with_name(p.name + ".data")] if p.with_name(p.name + ".data").exists() else [])) / 1e6
                         for k, p in files.items()}}


def markdown(results: list[dict], machine: dict) -> str:
    lines = [f"Machine: {machine.get('cpu')} ({machine.get('cores_usable')} usable cores), "
             f"{machine.get('memory_gb')} GB; torch {machine['software'].get('torch')}, "
             f"onnxruntime {machine['software'].get('onnxruntime')}.", "",
             "| model | params | variant | size MB | p50 ms | p90 ms | mean ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = r["stats"]["ort-fp32"]["p50_ms"]
        eager = r["stats"]["pytorch-eager"]["p50_ms"]
        for k, s in r["stats"].items():
            size = r["sizes_mb"].get(k.replace("ort-", "onnx-"))
            ref = f"{eager / s['p50_ms']:.2f}x eager" + (f", {base / s['p50_ms']:.2f}x ORT FP32" if k.startswith("ort-int8") else "")
            lines.append(f"| {r['label']} | {r['params_embedding'] / 1e6:.1f}M | {k} | {size:.0f} | {s['p50_ms']:.0f} | "
                         f"{s['p90_ms']:.0f} | {s['mean_ms']:.0f} | {ref if k != 'pytorch-eager' else '1.00x'} |"
                         if size is not None else
                         f"| {r['label']} | {r['params_embedding'] / 1e6:.1f}M | {k} | - | {s['p50_ms']:.0f} | "
                         f"{s['p90_ms']:.0f} | {s['mean_ms']:.0f} | 1.00x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint to benchmark (default: rgbnt100, random init)")
    ap.add_argument("--no-pruned", action="store_true", help="skip the structured-pruned model")
    ap.add_argument("--pruned-target", default="60M", help="structured prune target (default 60M)")
    ap.add_argument("--calib-data", help="dataset root for static INT8 calibration (default: small synthetic set)")
    ap.add_argument("--calib-samples", type=int, default=64, help="calibration images (default 64)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--iters", type=int, default=4, help="timed calls per variant per round (default 4)")
    ap.add_argument("--workdir", help="where checkpoints/artefacts go (reused when present; default: a temp folder)")
    ap.add_argument("--json", help="write the results as JSON here")
    args = ap.parse_args()

    from graft_edge.profile.hardware import machine_info

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="export-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    dense = ensure_model(workdir, args.model)
    from graft_edge.checkpoint import read_checkpoint

    modalities = read_checkpoint(dense).config.model.modalities
    calib = ensure_calib(workdir, args.calib_data, modalities)
    models = [("dense", dense)]
    if not args.no_pruned:
        pruned = ensure_pruned(workdir, dense, args.pruned_target)
        if pruned:
            models.append((f"structured {args.pruned_target}", pruned))
    results = []
    for label, ckpt in models:
        files = export_variants(ckpt, workdir / f"export-{ckpt.stem}", calib, args.calib_samples)
        results.append(bench_model(label, ckpt, files, args.batch, args.threads, args.rounds, args.iters))
    machine = machine_info()
    print(markdown(results, machine))
    for r in results:
        print(f"\n{r['label']}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
