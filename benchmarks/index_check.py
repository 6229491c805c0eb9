"""The gallery index end to end through the CLI, on a trained model and a dataset (e.g. the synthetic set).

1. `index build` is killed (SIGKILL) after its first batches, then rerun: the rerun reports how many
   images it kept from the killed run and embeds only the rest.
2. `index search` of the query split (--json): for every query, the top-10 must equal the top-10 of
   eval's distance matrix (`graft_edge.evaluation.embed_splits` + `pairwise_distance`).
3. `index search --model OTHER` must be refused with one line.
4. Plain vs re-ranked mAP/R1 of `eval --rerank` on the same model.

    python benchmarks/index_check.py MODEL DATA --other OTHER_MODEL --out runs/index_check
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

CLI = [sys.executable, "-m", "graft_edge"]


def interrupted_build(model: Path, data: Path, index: Path, batch: int, after_batches: int) -> dict:
    """Start `index build`, SIGKILL it once `after_batches` batch files exist, rerun; what each run did."""
    proc = subprocess.Popen(CLI + ["index", "build", str(model), str(data), "--out", str(index),
                                   "--batch-size", str(batch)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    part = index / "part-000"
    while proc.poll() is None and len(list(part.glob("batch-*.npy"))) < after_batches:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(part.glob("batch-*.npy")))
    rerun = subprocess.run(CLI + ["index", "build", str(model), str(data), "--out", str(index),
                                  "--batch-size", str(batch)], capture_output=True, text=True, check=False)
    return {"killed": killed, "batches_on_disk_after_kill": done, "rerun_output": rerun.stdout.strip(),
            "rerun_exit": rerun.returncode}


def top10_agreement(model: Path, data: Path, index: Path, out_json: Path) -> dict:
    """Search the query split through the CLI and compare with eval's distance matrix."""
    from graft_edge.evaluation import embed_splits
    from graft_edge.retrieval.metrics import pairwise_distance
    from graft_edge.runtime import load_embedder

    subprocess.run(CLI + ["index", "search", str(index), str(data), "--top", "10", "--json", str(out_json)],
                   capture_output=True, text=True, check=True)
    found = json.loads(out_json.read_text())["queries"]
    query, gallery = embed_splits(load_embedder(model), data)
    order = np.argsort(pairwise_distance(query.feats, gallery.feats), axis=1, kind="stable")[:, :10]
    names = [str(s.sources[0].path.resolve()) for s in gallery.samples]
    same = [[r["path"] for r in q["results"]] == [names[j] for j in row] for q, row in zip(found, order)]
    return {"queries": len(found), "same_top10": int(sum(same))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--other", type=Path, required=True, help="a different model file, to be refused")
    ap.add_argument("--out", type=Path, default=Path("runs/index_check"))
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    index = args.out / "index"
    doc = {"resume": interrupted_build(args.model, args.data, index, args.batch_size, after_batches=5)}
    doc["top10"] = top10_agreement(args.model, args.data, index, args.out / "search.json")
    refused = subprocess.run(CLI + ["index", "search", str(index), str(args.data), "--model", str(args.other)],
                             capture_output=True, text=True, check=False)
    doc["other_model"] = {"exit": refused.returncode, "output": (refused.stdout + refused.stderr).strip()}
    ev = subprocess.run(CLI + ["eval", str(args.model), "--data", str(args.data), "--rerank", "--json", "-"],
                        capture_output=True, text=True, check=True)
    metrics = json.loads(ev.stdout[ev.stdout.index("{"):])
    doc["eval"] = {"plain": {k: metrics[k] for k in ("mAP", "R1", "R5", "R10")},
                   "rerank": {k: metrics["rerank"][k] for k in ("mAP", "R1", "R5", "R10")}}
    (args.out / "index_check.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
