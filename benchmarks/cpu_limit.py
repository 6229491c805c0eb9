"""Speed at the limit of this CPU: DeiT-B x 3 against its shape-true and square GEMM peaks, where the time goes, and batch.

Regenerates the "Speed at the limit of the CPU" tables of benchmarks/README.md in one run:
  1. the artefacts (reused from --workdir when there): `graft-edge init rgbnt100 --no-pretrained` (dense.pt), its
     exports (ONNX FP32, ORT INT8 dynamic, OpenVINO FP32 / bf16 / NNCF INT8; bf16 only on CPUs with AVX512-BF16 /
     AMX), and the structured 60M / 46M models (`graft-edge prune`, no finetuning) as ORT INT8 and OpenVINO INT8;
  2. per thread count: the square 2048^3 GEMM peaks and each artefact's shape-true peaks (graft_edge.profile.peaks:
     its own GEMM shapes at the batch, fastest of torch / ONNX Runtime / OpenVINO per precision);
  3. per thread count, one interleaved pass (graft_edge.profile.latency.interleaved_latency) over every artefact:
     ms per sample, speed-up vs dense eager FP32, share of its precision's shape-true and square peaks;
  4. the time breakdown of every artefact at the first thread count (graft_edge.profile.breakdown: each runtime's
     own profiler; GEMM / attention / other / framework and the top op types);
  5. a batch sweep (--sweep) of the best artefacts: per-sample ms and share of the shape-true peak per batch.

    python benchmarks/cpu_limit.py --workdir deit --calib-data syn --threads 1,2 --json cpu_limit.json
    python benchmarks/cpu_limit.py --workdir deit --calib-data syn --threads 1 --sweep 1,2,4,8,16 --rounds 3

--calib-data is a dataset root (e.g. `graft-edge synth --out syn`): NNCF INT8 is calibrated on it; without it the
OpenVINO INT8 rows are left out. The load average before and after every pass is recorded: on a shared machine only
ratios inside a pass mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DENSE = {"onnx": "model.onnx", "int8": "model.int8-dynamic.onnx", "openvino": "model.openvino.xml",
         "openvino-bf16": "model.openvino-bf16.xml", "openvino-int8": "model.openvino-int8.xml"}
PRUNED = {"int8": "model.int8-dynamic.onnx", "openvino-int8": "model.openvino-int8.xml"}
SWEEP = ("dense openvino-bf16", "dense openvino-int8", "dense int8")  # + the smallest pruned model's openvino-int8


def _cli(*args: str) -> None:
    print("  $ graft-edge " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "graft_edge", *args], check=True)


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def artefacts(work: Path, calib: str | None, preset: str, sizes: list[str]) -> dict[str, Path]:
    """{label: file} of every artefact, built when missing (labels: 'dense torch', 'dense int8', '60M openvino-int8')."""
    from graft_edge.cpu import has_bf16

    work.mkdir(parents=True, exist_ok=True)
    dense = work / "dense.pt"
    if not dense.is_file():
        _cli("init", preset, "--no-pretrained", "--out", str(dense))
    ov = ["openvino"] + (["openvino-bf16"] if has_bf16() else []) + (["openvino-int8"] if calib else [])
    cal = ["--calib-data", calib, "--calib-samples", "32"] if calib else []
    out = {"dense torch": dense}
    exp = work / "exp"
    if not all((exp / DENSE[k]).is_file() for k in ("onnx", "int8")):
        _cli("export", str(dense), "--out", str(exp), "--formats", ",".join(["onnx", "int8", *ov]), *cal)
    out.update({f"dense {k}": exp / f for k, f in DENSE.items() if (exp / f).is_file()})
    source = dense
    for size in sizes:
        ckpt = work / f"p{size}.pt"
        if not ckpt.is_file():
            _cli("prune", str(source), "--target", size, "--out", str(ckpt))
        pexp = work / f"p{size}-exp"
        if not (pexp / PRUNED["int8"]).is_file():
            _cli("export", str(ckpt), "--out", str(pexp), "--formats", "int8,openvino-int8" if calib else "int8", *cal)
        out.update({f"{size} {k}": pexp / f for k, f in PRUNED.items() if (pexp / f).is_file()})
        source = ckpt
    return out


def _row(label: str, emb: Any, stats: Any, eager_ms: float, true_peaks: Any, square: dict, batch: int) -> dict:
    from graft_edge.profile.peaks import embedder_flops, roofline

    precision = str(emb.info.extra.get("precision") or "fp32")
    roof = roofline(embedder_flops(emb), stats.per_sample_ms, precision, true_peaks, square)
    return {"artefact": label, "precision": precision, "batch": batch, "params": emb.info.params_embedding,
            "ms_per_sample_p50": stats.per_sample_ms, "ms_per_sample_min": stats.min_ms / batch,
            "vs_dense_eager": eager_ms / stats.per_sample_ms if eager_ms else None,
            "shape_peak_by_runtime": ((true_peaks or {}).get(roof["peak_precision"]) or {}).get("by_runtime"), **roof}


def time_pass(paths: dict[str, Path], threads: int, batch: int, args) -> dict[str, Any]:
    """One interleaved pass over every artefact at `threads` and `batch`: peaks, rows, load."""
    import torch

    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.peaks import embedders_peaks, machine_peaks
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    torch.set_num_threads(threads)
    embedders = {k: load_embedder(p, threads=threads) for k, p in paths.items()}
    precision = {k: str(e.info.extra.get("precision") or "fp32") for k, e in embedders.items()}
    t0 = time.perf_counter()
    machine_peaks(threads, measure=True)  # the square 2048^3 peaks: measured once, cached
    square, true_peaks = embedders_peaks(embedders, precision, batch, threads)
    peak_s = time.perf_counter() - t0
    inputs = {k: synthetic_batch(e.info, batch) for k, e in embedders.items()}
    load0 = _load()
    times = interleaved_latency(embedders, inputs, rounds=args.rounds, iters_per_round=args.iters, warmup=args.warmup)
    load1 = _load()
    stats = {k: summarize(t, batch) for k, t in times.items()}
    eager = stats["dense torch"].per_sample_ms if "dense torch" in stats else None
    rows = [_row(k, embedders[k], stats[k], eager, true_peaks[k], square, batch) for k in paths]
    for r in rows:
        share = f"{100 * r['share_of_peak']:5.1f}% of {r['peak_precision']} shape-true" if r["share_of_peak"] else ""
        print(f"  [{threads} thr b{batch}] {r['artefact']:22s} {r['ms_per_sample_p50']:9.2f} ms/sample "
              f"{r['vs_dense_eager'] or 0:6.2f}x  {share}", flush=True)
    return {"threads": threads, "batch": batch, "square_peaks": square, "shape_peaks": true_peaks,
            "shape_peaks_seconds": peak_s, "rows": rows, "load": [load0, load1], "embedders": embedders}


def breakdowns(embedders: dict[str, Any], paths: dict[str, Path], threads: int, calls: int) -> dict[str, Any]:
    """The time breakdown of every artefact at batch 1."""
    from graft_edge.profile.breakdown import profile_run

    out = {}
    for label, emb in embedders.items():
        rec = profile_run(emb, paths[label], 1, threads, calls=calls)
        out[label] = rec
        g = rec["groups"]
        print(f"  breakdown {label:22s} " + " ".join(f"{k} {100 * v / rec['profiled_ms']:4.1f}%" for k, v in g.items())
              + f"  (covers {100 * (rec['coverage'] or 0):.0f}% of the profiled calls)", flush=True)
    return out


def sweep(paths: dict[str, Path], threads: int, batches: list[int], args) -> list[dict[str, Any]]:
    """Per-sample ms and shape-true share per batch for the sweep's artefacts (one interleaved pass per batch)."""
    smallest = f"{args.sizes[-1]} openvino-int8" if args.sizes else None
    chosen = {k: p for k, p in paths.items() if k in SWEEP or k == smallest}
    rows = []
    for b in batches:
        res = time_pass(chosen, threads, b, argparse.Namespace(**{**vars(args), "rounds": args.sweep_rounds}))
        rows += res["rows"]
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The README's tables."""
    lines = ["| threads | artefact | precision | ms/sample | vs dense eager | shape-true peak | share | 2048^3 peak | "
             "share |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in result["passes"]:
        for r in p["rows"]:
            lines.append(f"| {p['threads']} | {r['artefact']} | {r['precision']} | {r['ms_per_sample_p50']:.1f} | "
                         f"{r['vs_dense_eager']:.2f}x | {r['peak_gflops'] or 0:.0f} | {100 * (r['share_of_peak'] or 0):.0f}% | "
                         f"{r['square_peak_gflops'] or 0:.0f} | {100 * (r['share_of_square_peak'] or 0):.0f}% |")
    lines += ["", "| artefact | GEMM | attention | other | framework | top op types (ms) | covers |",
              "|---|---:|---:|---:|---:|---|---:|"]
    for label, rec in result.get("breakdown", {}).items():
        g, tot = rec["groups"], rec["profiled_ms"] or 1.0
        top = ", ".join(f"{o['op']} {o['ms']:.1f}" for o in rec["ops"][:4])
        lines.append(f"| {label} | " + " | ".join(f"{100 * g[k] / tot:.0f}%" for k in ("gemm", "attention", "other",
                                                                                      "framework"))
                     + f" | {top} | {100 * (rec['coverage'] or 0):.0f}% |")
    if result.get("sweep"):
        lines += ["", "| artefact | batch | ms/sample | shape-true peak | share |", "|---|---:|---:|---:|---:|"]
        for r in result["sweep"]:
            lines.append(f"| {r['artefact']} | {r['batch']} | {r['ms_per_sample_p50']:.1f} | {r['peak_gflops'] or 0:.0f} | "
                         f"{100 * (r['share_of_peak'] or 0):.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="cpu-limit", help="where the checkpoints and exports are (reused) or go")
    ap.add_argument("--preset", default="rgbnt100", help="architecture preset (random weights: speed only)")
    ap.add_argument("--sizes", default="60M,46M", help="structured-pruning targets, each pruned from the previous "
                    "('': the dense model only)")
    ap.add_argument("--calib-data", default=None, help="dataset root calibrating NNCF INT8 (none: no OpenVINO INT8)")
    ap.add_argument("--threads", default="1,2", help="thread counts, one interleaved pass each")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per pass")
    ap.add_argument("--iters", type=int, default=2, help="timed calls per artefact per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile-calls", type=int, default=3, help="profiled calls per artefact (0: no breakdown)")
    ap.add_argument("--sweep", default="1,2,4,8,16", help="batch sizes of the sweep at the first thread count ('': none)")
    ap.add_argument("--sweep-rounds", type=int, default=2)
    ap.add_argument("--json", default=None, help="write everything here")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    from graft_edge.profile.hardware import machine_info

    args.sizes = [x.strip() for x in args.sizes.split(",") if x.strip()]
    paths = artefacts(Path(args.workdir), args.calib_data, args.preset, args.sizes)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    result: dict[str, Any] = {"machine": machine_info(), "passes": []}
    for i, t in enumerate(threads):
        p = time_pass(paths, t, 1, args)
        if i == 0 and args.profile_calls:
            result["breakdown"] = breakdowns(p["embedders"], paths, t, args.profile_calls)
        del p["embedders"]
        result["passes"].append(p)
    batches = [int(b) for b in args.sweep.split(",") if b.strip()]
    if batches:
        result["sweep"] = sweep(paths, threads[0], batches, args)
    result["seconds"] = time.perf_counter() - started
    print(markdown(result))
    print(f"run time {result['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
