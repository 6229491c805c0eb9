"""Batch independence of each served format: every sample's embedding at batch 1 against in one full dynamic batch.

For each artefact: the first N query images of DATA (evaluation preprocessing) as N single-sample requests
through serve's per-request path (graft_edge.serve.batching.embed_requests, what the Triton model runs),
once all N as one dynamic batch and once one request at a time. Reported per format: the largest absolute
difference of any embedding element, the smallest cosine, and whether the format table calls the format
batch-independent.

    python benchmarks/batch_independence.py run/best.pt exp/model*.onnx exp/model*.xml --data syn --json bi.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from graft_edge.data import build_eval_loaders
from graft_edge.evaluation import model_config_of
from graft_edge.formats import batch_dependent_format
from graft_edge.runtime import load_embedder
from graft_edge.serve.batching import RequestAssembler, embed_requests


def one_artefact(path: Path, data: Path, n: int, threads: int) -> dict:
    embedder = load_embedder(path, threads=threads)
    query, _ = build_eval_loaders(data, model_config_of(embedder.info), batch_size=n)
    images, _, _ = next(iter(query))
    requests = [{m: images[m][i:i + 1].numpy() for m in embedder.info.modalities} for i in range(len(images[
        embedder.info.modalities[0]]))]
    assemble = RequestAssembler(embedder.info)
    batched = np.concatenate(embed_requests(embedder, assemble, requests))
    alone = np.concatenate([embed_requests(embedder, assemble, [r])[0] for r in requests])
    cos = np.sum(batched * alone, axis=1) / np.linalg.norm(batched, axis=1) / np.linalg.norm(alone, axis=1)
    precision = embedder.info.extra.get("precision")
    return {"artefact": path.name, "runtime": embedder.info.format, "precision": precision, "samples": len(requests),
            "batch_independent": batch_dependent_format(embedder.info.format, precision) is None,
            "max_abs_diff": float(np.abs(batched - alone).max()), "min_cosine": float(cos.min())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artefacts", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=64, help="requests in the full batch")
    ap.add_argument("--threads", type=int, default=1, help="runtime threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = [one_artefact(p, args.data, args.samples, args.threads) for p in args.artefacts]
    print("| artefact | precision | table says | max abs diff | min cosine |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['artefact']} | {r['precision']} | {'independent' if r['batch_independent'] else 'dependent'} | "
              f"{r['max_abs_diff']:.2e} | {r['min_cosine']:.6f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
