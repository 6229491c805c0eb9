"""Reproduce every performance figure in benchmarks/README.md in one run, side by side, with ratios.

Runs each benchmark in its own process (so no run inherits another's threads, allocator or loaded
models), writes OUT/<name>.json and OUT/<name>.log, then prints one summary of the ratios and writes
OUT/summary.json with the machine record:

  train_throughput  training samples/s: 1 vs 2 threads vs DDP (benchmarks/train_throughput.py)
  export_latency    PyTorch eager vs ONNX Runtime FP32 vs INT8 dynamic/static (benchmarks/export_latency.py)
  prune_latency     dense vs structured vs unstructured pruning, PyTorch (benchmarks/prune_latency.py)
  matmul_peak       model latency as a share of this CPU's measured GEMM rate (benchmarks/matmul_peak.py)
  demo              the frontier of the synthetic preset: `graft-edge demo` (train, prune, export, time)
  rerank_speed      k-reciprocal re-ranking vs the loop-per-image reference, large sizes (benchmarks/rerank_speed.py)

    python benchmarks/run_all.py                 # the README's settings (DeiT-B sized models: an hour or more on 2 cores)
    python benchmarks/run_all.py --quick         # small models and short runs (a few minutes)
    python benchmarks/run_all.py --only matmul_peak,prune_latency --out results/
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent


def _script(name: str) -> list[str]:
    return [sys.executable, str(HERE / f"{name}.py")]


def _synthetic_ckpt(out: Path) -> Path:
    """A random-init synthetic-preset checkpoint (the quick runs' model)."""
    path = out / "synthetic-init.pt"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "graft_edge", "init", "synthetic", "--out", str(path)], check=True,
                       stdout=subprocess.DEVNULL)
    return path


# name -> (command builder(out_dir, quick, threads), ratio extractor(json) -> list of lines)
def _train_cmd(out: Path, quick: bool, threads: int | None) -> list[str]:
    return _script("train_throughput") + (["--skip-full", "--steps", "5", "--warmup", "1"] if quick else []) + [
        "--json", str(out / "train_throughput.json")]


def _train_ratios(doc: dict) -> list[str]:
    rows = {r["variant"]: r["samples_per_s"] for r in doc.get("rows", [])}
    one = rows.get("synthetic stage1, 1 proc x 1 thr")
    lines = [f"{k}: {v:.2f} samples/s" + (f" ({v / one:.2f}x of 1 proc x 1 thr)" if one and k.startswith("synthetic")
                                          else "") for k, v in rows.items()]
    return lines


def _export_cmd(out: Path, quick: bool, threads: int | None) -> list[str]:
    cmd = _script("export_latency") + ["--workdir", str(out / "export_latency_work"), "--json", str(out / "export_latency.json")]
    if quick:
        cmd += ["--model", str(_synthetic_ckpt(out)), "--pruned-target", "45%", "--batch", "32", "--rounds", "2",
                "--iters", "2"]
    return cmd + (["--threads", str(threads)] if threads else [])


def _export_ratios(doc: dict) -> list[str]:
    return [f"{r.get('label')}: " + ", ".join(f"{k} {v:.2f}x" for k, v in (r.get("ratios") or {}).items())
            for r in doc.get("results", [])]


def _prune_cmd(out: Path, quick: bool, threads: int | None) -> list[str]:
    cmd = _script("prune_latency") + ["--json", str(out / "prune_latency.json")]
    if quick:
        cmd += ["--preset", "synthetic", "--target", "45%", "--rounds", "2", "--iters", "2"]
    return cmd + (["--threads", str(threads)] if threads else [])


def _prune_ratios(doc: dict) -> list[str]:
    return [f"{r['variant']}: {r['params_embedding'] / 1e6:.2f}M params, p50 {r['p50_ms']:.1f} ms, "
            f"{r['speedup_vs_dense']:.2f}x vs dense" for r in doc.get("rows", [])]


def _matmul_cmd(out: Path, quick: bool, threads: int | None) -> list[str]:
    return _script("matmul_peak") + (["--quick"] if quick else []) + ["--workdir", str(out / "matmul_peak_work"),
                                                                       "--json", str(out / "matmul_peak.json")] + (
        ["--threads", str(threads)] if threads else [])


def _matmul_ratios(doc: dict) -> list[str]:
    lines = [f"{t} thread(s): GEMM peaks " + ", ".join(f"{k} {p[k]['gflops']}" for k in ("fp32", "bf16", "int8"))
             for t, p in doc.get("peaks", {}).items()]
    lines += [f"{r['model']} {r['threads']}thr {r['format']}: {r['ms_per_sample_p50']:.3f} ms/sample, "
              f"{r['speedup_vs_eager']:.2f}x vs eager, "
              + (f"{100 * r['share_of_peak']:.0f}% of the {r['peak_precision']} peak" if r.get("share_of_peak") else "")
              for r in doc.get("rows", [])]
    return lines


def _demo_cmd(out: Path, quick: bool, threads: int | None) -> list[str]:
    return [sys.executable, "-m", "graft_edge", "demo", "--out", str(out / "demo")] + (["--fast"] if quick else []) + (
        ["--threads", str(threads)] if threads else [])


def _demo_json(out: Path) -> Path:
    return out / "demo" / "demo.json"


def _demo_ratios(doc: dict) -> list[str]:
    h = doc.get("headline") or {}
    if not h:
        return ["no headline (see demo.log)"]
    lines = [f"synthetic: pruned {h.get('format', 'int8')} {h['variant']} vs dense PyTorch eager: {h['speedup']:.2f}x p50"
             + (f", {h['speedup_min']:.2f}x best-of-N" if h.get("speedup_min") else "")
             + f" at batch {h['batch']}; mAP {100 * (h.get('mAP') or 0):.1f} vs {100 * (h.get('dense_mAP') or 0):.1f}"
             + (f" ({h['vs_dense']})" if h.get("vs_dense") else "")]
    s = doc.get("scale_headline") or {}
    if s:
        lines.append(f"rgbnt100 architecture (random weights): pruned INT8 {s['variant']} vs dense PyTorch eager: "
                     f"{s['speedup']:.2f}x p50" + (f", {s['speedup_min']:.2f}x best-of-N" if s.get("speedup_min") else "")
                     + f" at batch {s['batch']} ({s.get('variant_ms', s.get('int8_ms')):.0f} vs {s['dense_ms']:.0f} ms)")
    return lines + ["times: " + ", ".join(f"{k} {v:.0f} s" for k, v in doc.get("seconds", {}).items())]


def _rerank_cmd(out: Path, quick: bool, threads: int | None) -> list[str]:
    sizes = ["--side", "300x1500", "--large", "1000x5000", "--features", "2000x10000"] if quick else []
    return _script("rerank_speed") + sizes + ["--out", str(out / "rerank_speed_work")]


def _rerank_json(out: Path) -> Path:
    return out / "rerank_speed_work" / "rerank_speed.json"


def _rerank_ratios(doc: dict) -> list[str]:
    a = doc.get("agreement") or {}
    lines = [f"rerank {a['speedup']:.1f}x faster than the reference, identical top-1 {100 * a['top1_identical']:.1f}%, "
             f"mAP difference {a['mAP_diff']:.1e}"] if a else []
    return lines + [f"{r['kind']} {r['q']}x{r['g']}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB"
                    for r in doc.get("rows", []) if "seconds" in r]


BENCHMARKS: dict[str, tuple[Callable[..., list[str]], Callable[[dict], list[str]], Callable[[Path], Path] | None]] = {
    "train_throughput": (_train_cmd, _train_ratios, None),
    "export_latency": (_export_cmd, _export_ratios, None),
    "prune_latency": (_prune_cmd, _prune_ratios, None),
    "matmul_peak": (_matmul_cmd, _matmul_ratios, None),
    "demo": (_demo_cmd, _demo_ratios, _demo_json),
    "rerank_speed": (_rerank_cmd, _rerank_ratios, _rerank_json),
}


def run_one(name: str, out: Path, quick: bool, threads: int | None) -> dict[str, Any]:
    """Run one benchmark as a subprocess, tee its output to OUT/NAME.log; {name, rc, seconds, json, ratios}."""
    build, ratios, json_path = BENCHMARKS[name]
    cmd = build(out, quick, threads)
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", "120")})
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    path = json_path(out) if json_path else out / f"{name}.json"
    doc = json.loads(path.read_text()) if path.is_file() and rc == 0 else None
    lines = ratios(doc) if doc else []
    return {"name": name, "rc": rc, "seconds": time.perf_counter() - started, "json": str(path) if doc else None,
            "ratios": lines}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models and short runs (minutes, not an hour)")
    ap.add_argument("--out", type=Path, default=Path("benchmark-results"), help="folder for logs and JSON (default benchmark-results/)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--threads", type=int, default=None, help="threads for the inference benchmarks (default: all cores)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in (args.only.split(",") if args.only else BENCHMARKS) if n.strip()]
    names = [n for n in names if n not in {s.strip() for s in args.skip.split(",")}]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        print(f"error: unknown benchmark {bad[0]!r}: expected some of {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE.parent))
    from graft_edge.profile.hardware import machine_info

    machine = machine_info()
    print(f"machine: {machine['cpu']} ({machine['cores_usable']} cores), "
          f"GPUs: {', '.join(g['name'] for g in machine['gpus']) or 'none'}, torch {machine['software']['torch']}, "
          f"onnxruntime {machine['software']['onnxruntime']}; load average {os.getloadavg()[0]:.1f}"
          + ("; --quick" if args.quick else ""), flush=True)
    results = [run_one(n, args.out, args.quick, args.threads) for n in names]
    print("\n=== summary (ratios measured side by side within each benchmark)")
    for r in results:
        status = "ok" if r["rc"] == 0 else f"FAILED (exit {r['rc']}, see {args.out / (r['name'] + '.log')})"
        print(f"{r['name']} [{status}, {r['seconds']:.0f} s]")
        for line in r["ratios"]:
            print(f"  {line}")
    from graft_edge.fileio import write_json

    write_json(args.out / "summary.json", {"quick": args.quick, "machine": machine, "results": results})
    print(f"\nwrote {args.out / 'summary.json'}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
