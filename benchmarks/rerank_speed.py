"""Speed, memory and agreement of `graft_edge.retrieval.metrics.rerank` against the loop-per-image reference, side by side.

Each implementation runs in its own child process on the same random clustered problem (identities as
Gaussian clusters), so peak memory is measured per implementation: the peak resident set of the child
minus its resident set just before the call (inputs already in memory). Agreement: identical top-1 per
query, mAP of both, largest absolute difference of the distances. Then `rerank` alone at larger sizes:
the distance-matrix form (needs the caller's G x G matrix) and `rerank_features` (the same algorithm
computing distances from features block by block, no G x G matrix).

    python benchmarks/rerank_speed.py                                   # 1000 x 5000 side by side + large sizes
    python benchmarks/rerank_speed.py --side 500x2000 --large 2000x10000 --features 10000x50000
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _problem(q: int, g: int, dim: int, seed: int) -> dict:
    from rerank_reference import clustered_problem

    return clustered_problem(q, g, ids=max(10, g // 25), dim=dim, noise=2.0, seed=seed)


def _block_distances(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q_g, q_q, g_g Euclidean distances of L2-normalised features, float32, built block by block."""
    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        out = np.empty((len(a), len(b)), dtype=np.float32)
        for s in range(0, len(a), 2048):
            out[s:s + 2048] = np.sqrt(np.clip(2.0 - 2.0 * a[s:s + 2048] @ b.T, 0.0, None))
        return out

    return dist(p["qf"], p["gf"]), dist(p["qf"], p["qf"]), dist(p["gf"], p["gf"])


def _child(kind: str, q: int, g: int, dim: int, seed: int, out: str) -> None:
    """Run one implementation on the problem; write its timing/memory (and result matrix) to out."""
    p = _problem(q, g, dim, seed)
    blocks = _block_distances(p) if kind != "features" else None
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    if kind == "reference":
        from rerank_reference import reference_rerank

        dist = reference_rerank(*blocks)
    elif kind == "rerank":
        from graft_edge.retrieval.metrics import rerank

        dist = rerank(*blocks)
    else:
        from graft_edge.retrieval.metrics import rerank_features

        dist = rerank_features(p["qf"], p["gf"])
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    top1 = dist.argmin(axis=1)
    from graft_edge.retrieval.metrics import evaluate_rank

    m = evaluate_rank(dist, p["qi"], p["gi"], p["qc"], p["gc"]) if q * g <= 2e7 else None
    np.savez(out, dist=dist if q * g <= 2e7 else np.zeros(0), top1=top1)
    Path(out + ".json").write_text(json.dumps({
        "kind": kind, "q": q, "g": g, "dim": dim, "seconds": seconds, "peak_rss_gib": peak / 2**20,
        "extra_rss_gib": (peak - before) / 2**20, "input_gib": sum(b.nbytes for b in blocks) / 2**30 if blocks else 0.0,
        "mAP": m.mAP if m else None, "R1": float(m.cmc[0]) if m else None}))


def run(kind: str, size: tuple[int, int], dim: int, seed: int, tmp: Path) -> dict:
    """One implementation in a fresh child process; its measurements and result."""
    out = str(tmp / f"{kind}_{size[0]}x{size[1]}")
    proc = mp.get_context("spawn").Process(target=_child, args=(kind, size[0], size[1], dim, seed, out))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"kind": kind, "q": size[0], "g": size[1], "failed": f"exit code {proc.exitcode}"}
    res = json.loads(Path(out + ".json").read_text())
    arrays = np.load(out + ".npz")
    res["_dist"], res["_top1"] = arrays["dist"], arrays["top1"]
    return res


def _size(text: str) -> tuple[int, int]:
    q, g = text.lower().split("x")
    return int(q), int(g)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=_size, default=(1000, 5000), help="QxG for the side-by-side comparison")
    ap.add_argument("--large", type=_size, action="append", default=None,
                    help="QxG sizes for the distance-matrix rerank alone (repeatable; default 5000x25000; 0x0: none)")
    ap.add_argument("--features", type=_size, action="append", default=None,
                    help="QxG sizes for rerank_features alone (repeatable; default 10000x50000; 0x0: none)")
    ap.add_argument("--dim", type=int, default=256, help="feature dimension of the random problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/rerank_speed"), help="folder for rerank_speed.json")
    ap.add_argument("--no-side", action="store_true", help="skip the side-by-side comparison (large sizes only)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, agree = [], None
    if not args.no_side:
        ref = run("reference", args.side, args.dim, args.seed, args.out)
        new = run("rerank", args.side, args.dim, args.seed, args.out)
        agree = {"top1_identical": float((ref["_top1"] == new["_top1"]).mean()),
                 "max_abs_diff": float(np.abs(ref["_dist"] - new["_dist"]).max()),
                 "mAP_diff": abs(ref["mAP"] - new["mAP"]), "speedup": ref["seconds"] / new["seconds"]}
        rows += [ref, new]
    for kind, sizes, default in (("rerank", args.large, (5000, 25000)), ("features", args.features, (10000, 50000))):
        rows += [run(kind, size, args.dim, args.seed, args.out) for size in sizes or [default] if min(size) > 0]
    for r in rows:
        r.pop("_dist", None), r.pop("_top1", None)
    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_avg_1min_at_end": os.getloadavg()[0]}, "agreement": agree, "rows": rows}
    (args.out / "rerank_speed.json").write_text(json.dumps(doc, indent=2))
    print(markdown(doc))
    return doc


def markdown(doc: dict) -> str:
    a = doc["agreement"]
    lines = ["| implementation | Q x G | seconds | peak RSS GiB | extra RSS GiB | inputs GiB | mAP | R1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "failed" in r:
            lines.append(f"| {r['kind']} | {r['q']} x {r['g']} | failed ({r['failed']}) | | | | | |")
            continue
        m = f"{100 * r['mAP']:.2f}" if r["mAP"] is not None else "-"
        r1 = f"{100 * r['R1']:.2f}" if r["R1"] is not None else "-"
        lines.append(f"| {r['kind']} | {r['q']} x {r['g']} | {r['seconds']:.2f} | {r['peak_rss_gib']:.2f} | "
                     f"{r['extra_rss_gib']:.2f} | {r['input_gib']:.2f} | {m} | {r1} |")
    if a is None:
        return "\n".join(lines)
    lines.append("")
    lines.append("Agreement at the side-by-side size: identical top-1 for "
                 f"{100 * a['top1_identical']:.2f}% of queries, "
                 f"mAP difference {a['mAP_diff']:.2e}, largest distance difference {a['max_abs_diff']:.2e}; "
                 f"rerank {a['speedup']:.1f}x faster than the reference.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
