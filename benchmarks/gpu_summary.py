"""Side-by-side table of `graft-edge bench` JSON files from a GPU run (benchmarks/gpu_check.sh), and the
one-sentence answer to "what does structured pruning buy on this GPU" at each batch size.

    python benchmarks/gpu_summary.py OUT/bench_*.json [--markdown OUT/gpu_summary.md]

Rows: every (model, runtime/precision) pair of the files; columns per batch: ms per call, samples/s, J/sample
(NVML energy counter), GPU utilisation. The pruning sentence compares the fastest variant of each size
(dense / 60M / 46M: recognised by the parameter count) at each batch.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RUNTIME_NAMES = {"torch": "PyTorch", "onnx": "ORT", "tensorrt": "TensorRT", "openvino": "OpenVINO"}


def rows_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, batch) of a bench report that ran."""
    dtype = report["settings"].get("dtype", "fp32")
    device = "CUDA" if str(report["settings"].get("device", "cpu")).startswith("cuda") else "CPU"
    out = []
    for res in report["results"]:
        if res["status"] != "ok":
            continue
        fmt = res["format"]
        precision = dtype if fmt == "torch" else res.get("precision") or "fp32"
        for run in res["runs"]:
            if run["status"] != "ok":
                continue
            power, util = run.get("power") or {}, run.get("utilization") or {}
            out.append({
                "model": Path(res["model"]).name, "params": res["params_embedding"],
                "runtime": f"{RUNTIME_NAMES.get(fmt, fmt)} {device} {precision}", "batch": run["batch"],
                "ms": run["latency"]["p50_ms"], "per_s": run["latency"]["throughput"],
                "j_per_sample": power.get("energy_per_sample_j"), "util": util.get("mean_pct"),
            })
    return out


def size_label(params: int, dense: int) -> str:
    """'dense' or the size in millions."""
    return "dense" if params >= dense else f"{params / 1e6:.{0 if params >= 1e7 else 2}f}M"


def pruning_sentence(rows: list[dict[str, Any]]) -> str:
    """Fastest variant per size and batch -> one sentence with the speedups over dense."""
    dense = max(r["params"] for r in rows)
    parts = []
    for batch in sorted({r["batch"] for r in rows}):
        best: dict[str, dict[str, Any]] = {}
        for r in (r for r in rows if r["batch"] == batch):
            key = size_label(r["params"], dense)
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
        if "dense" not in best:
            continue
        d = best["dense"]
        cuts = [f"{k} {d['ms'] / v['ms']:.2f}x ({v['ms']:.2f} vs {d['ms']:.2f} ms, {v['runtime']})"
                for k, v in sorted(best.items(), key=lambda kv: -kv[1]["params"]) if k != "dense"]
        util = f", dense GPU utilisation {d['util']:.0f}%" if d.get("util") is not None else ""
        parts.append(f"at batch {batch} the fastest structured variant vs the fastest dense: {'; '.join(cuts)}{util}")
    return "What pruning buys on this GPU: " + "; ".join(parts) + "." if parts else "no dense rows to compare"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The side-by-side table."""
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = ["| model | params | runtime | batch | ms/call | samples/s | J/sample | GPU util % |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (-r["params"], r["batch"], r["ms"])):
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['runtime']} | {r['batch']} | {r['ms']:.2f} | "
                     f"{r['per_s']:.1f} | {num(r['j_per_sample'], '.4f')} | {num(r['util'], '.0f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="bench JSON files (graft-edge bench --json)")
    ap.add_argument("--markdown", type=Path, default=None, help="Also write the table and sentence here.")
    args = ap.parse_args(argv)
    rows = [row for path in args.reports for row in rows_of(json.loads(path.read_text()))]
    text = markdown(rows) + "\n\n" + pruning_sentence(rows) + "\n"
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
