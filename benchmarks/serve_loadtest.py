"""Serving on the loopback: `graft-edge serve` + `graft-edge loadtest` + evaluation through the server.

For each model: start `graft-edge serve MODEL` in its own process (dynamic batching), run the closed-loop
sweep (1, 4, 16 clients, --seconds each), then send the query/gallery split through the server (gRPC,
float tensors) and compare the embeddings and mAP with `graft-edge eval` of the same file in this process.
With --baseline-src DIR (another graft-edge source tree, e.g. an earlier release) DIR's `graft-edge serve`
and this tree's run side by side instead, and every concurrency level runs on one then the other (the
order alternating), --repeats times, so the two are measured back to back on the same CPU.

    python benchmarks/serve_loadtest.py RUN/best.pt EXP/model.int8-static.onnx --data SYN --out serve-bench
    python benchmarks/serve_loadtest.py EXP/model.int8-static.onnx --data SYN --out cmp --baseline-src OLD --repeats 6
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from graft_edge.data import build_eval_loaders
from graft_edge.evaluation import evaluate_embedder, model_config_of
from graft_edge.retrieval.metrics import evaluate_rank, pairwise_distance
from graft_edge.runtime import load_embedder
from graft_edge.serve.loadtest import LoadSettings, free_ports, run_loadtest
from graft_edge.serve.server import model_name

ROOT = Path(__file__).resolve().parents[1]  # this source tree
LEVELS = (1, 4, 16)  # concurrent closed-loop clients


def wait_ready(port: int, name: str, proc: subprocess.Popen, limit: float = 180) -> None:
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if client.is_server_ready() and client.is_model_ready(name):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not become ready")


def features_through_server(grpc_port: int, name: str, loader, modalities) -> tuple[np.ndarray, ...]:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    feats, ids, cams = [], [], []
    for images, pids, camids in loader:
        inputs = []
        for m in modalities:
            x = images[m].numpy()
            inp = grpc.InferInput(m, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            inputs.append(inp)
        feats.append(client.infer(name, inputs, client_timeout=60).as_numpy("embedding"))
        ids.append(np.asarray(pids))
        cams.append(np.asarray(camids))
    client.close()
    return np.concatenate(feats), np.concatenate(ids), np.concatenate(cams)


def start_server(path: Path, src: Path, args: argparse.Namespace, *extra: str) -> tuple[subprocess.Popen, list[int]]:
    """`graft-edge serve PATH` of the source tree `src` in its own process, on free ports; (process, ports)."""
    ports = free_ports(3)
    cmd = [sys.executable, "-m", "graft_edge", "serve", str(path), "--http-port", str(ports[0]), "--grpc-port",
           str(ports[1]), "--metrics-port", str(ports[2]), "--max-batch", str(args.max_batch),
           "--queue-delay-us", str(args.queue_delay_us), "--instances", str(args.instances), *extra]
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, ports


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def one_model(path: Path, data: Path, seconds: float, args: argparse.Namespace) -> dict:
    name = model_name(path)
    proc, (http_port, grpc_port, _) = start_server(path, ROOT, args, *args.serve_arg)
    try:
        wait_ready(http_port, name, proc)
        load = run_loadtest(LoadSettings(target=f"127.0.0.1:{grpc_port}", model=name, concurrency=(1, 4, 16),
                                         seconds=seconds, timeout=30), progress=print)
        local = load_embedder(path)
        q_loader, g_loader = build_eval_loaders(data, model_config_of(local.info), batch_size=32)
        qf, qi, qc = features_through_server(grpc_port, name, q_loader, local.info.modalities)
        gf, gi, gc = features_through_server(grpc_port, name, g_loader, local.info.modalities)
        served = evaluate_rank(pairwise_distance(qf, gf), qi, gi, qc, gc).summary()
        local_acc = evaluate_embedder(local, data, batch_size=32)
        lq = np.concatenate([local.embed({m: im[m].numpy() for m in local.info.modalities}) for im, _, _ in q_loader])
    finally:
        stop_server(proc)
    return {"model": str(path), "name": name, "loadtest": load, "served_mAP": served["mAP"],
            "eval_mAP": local_acc["mAP"], "max_abs_diff_query": float(np.abs(qf - lq).max())}


def compare(path: Path, args: argparse.Namespace) -> dict:
    """Both servers up at once; each concurrency level runs on baseline and this tree in turn (the order alternating),
    --repeats times, so every pair of measurements is back to back on the same CPU."""
    name = model_name(path)
    servers = {"baseline": start_server(path, args.baseline_src, args),
               "current": start_server(path, ROOT, args, *args.serve_arg)}
    runs: dict[str, dict[int, list]] = {k: {c: [] for c in LEVELS} for k in servers}
    try:
        for proc, ports in servers.values():
            wait_ready(ports[0], name, proc)
        for r in range(args.repeats):
            for c in LEVELS:
                for key in (list(servers) if r % 2 == 0 else list(servers)[::-1]):
                    settings = LoadSettings(target=f"127.0.0.1:{servers[key][1][1]}", model=name, concurrency=(c,),
                                            seconds=args.seconds, timeout=30)
                    level = run_loadtest(settings)["levels"][0]
                    runs[key][c].append({**level, "load_average_1min": os.getloadavg()[0]})
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    summary = {}
    for c in LEVELS:
        row = {k: {"rps": float(np.mean([lv["throughput_rps"] for lv in runs[k][c]])),
                   "p50_ms": float(np.median([lv["p50_ms"] for lv in runs[k][c]])),
                   "p99_ms": float(np.median([lv["p99_ms"] for lv in runs[k][c]])),
                   "errors": int(sum(lv["errors"] for lv in runs[k][c]))} for k in runs}
        ratios = [a["throughput_rps"] / b["throughput_rps"] for a, b in zip(runs["current"][c], runs["baseline"][c])]
        row["ratio_of_means"] = row["current"]["rps"] / row["baseline"]["rps"]
        row["pair_ratios"] = ratios
        summary[c] = row
        print(f"{path.name} {c} clients: baseline {row['baseline']}, current {row['current']}; current/baseline "
              f"{row['ratio_of_means']:.3f} (pairs: {', '.join(f'{x:.2f}' for x in ratios)})")
    return {"model": str(path), "name": name, "runs": runs, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--queue-delay-us", type=int, default=2000)
    ap.add_argument("--instances", type=int, default=1)
    ap.add_argument("--serve-arg", action="append", default=[], help="extra option for this tree's `serve` (repeat)")
    ap.add_argument("--baseline-src", type=Path, help="another graft-edge source tree to compare with, back to back")
    ap.add_argument("--repeats", type=int, default=6, help="rounds of baseline and this tree (with --baseline-src)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.baseline_src is not None:
        results = [compare(path, args) for path in args.models]
        (args.out / "serve_compare.json").write_text(json.dumps(results, indent=2, default=str))
        return
    results = []
    for path in args.models:
        r = one_model(path, args.data, args.seconds, args)
        results.append(r)
        lv = {x["concurrency"]: x for x in r["loadtest"]["levels"]}
        print(f"{r['name']}: " + ", ".join(f"{c} clients {lv[c]['throughput_rps']:.1f} req/s p99 {lv[c]['p99_ms']:.1f} ms"
                                           f" ({lv[c]['errors']} errors)" for c in lv)
              + f"; x{lv[16]['throughput_rps'] / lv[1]['throughput_rps']:.2f} at 16 vs 1; served mAP "
              f"{100 * r['served_mAP']:.2f} vs eval {100 * r['eval_mAP']:.2f}, max|diff| {r['max_abs_diff_query']:.1e}")
    (args.out / "serve_loadtest.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
