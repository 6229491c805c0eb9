"""Serving on the loopback: `graft-edge serve` + `graft-edge loadtest` + evaluation through the server.

For each model: start `graft-edge serve MODEL` in its own process (dynamic batching), run the closed-loop
sweep (1, 4, 16 clients, --seconds each), then send the query/gallery split through the server (gRPC,
float tensors) and compare the embeddings and mAP with `graft-edge eval` of the same file in this process.

    python benchmarks/serve_loadtest.py RUN/best.pt EXP/model.int8-dynamic.onnx --data SYN --out serve-bench
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


def one_model(path: Path, data: Path, seconds: float, args: argparse.Namespace) -> dict:
    name = model_name(path)
    http_port, grpc_port, metrics_port = free_ports(3)
    cmd = [sys.executable, "-m", "graft_edge", "serve", str(path), "--http-port", str(http_port), "--grpc-port",
           str(grpc_port), "--metrics-port", str(metrics_port), "--max-batch", str(args.max_batch),
           "--queue-delay-us", str(args.queue_delay_us), "--instances", str(args.instances)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"model": str(path), "name": name, "loadtest": load, "served_mAP": served["mAP"],
            "eval_mAP": local_acc["mAP"], "max_abs_diff_query": float(np.abs(qf - lq).max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--queue-delay-us", type=int, default=2000)
    ap.add_argument("--instances", type=int, default=1)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
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
