"""What gathering the global batch costs under DDP: steps/s of one training step on 2 gloo processes with the loss
of the gathered global batch (the trainer's) against each process's loss of its own slice (what the trainer did
before: per-process triplets and BNNeck statistics), the two interleaved round by round in the same processes.

The `synthetic` preset's model at the capacity-bound set's shapes (32 x 64 images, 3 modalities), a global batch of
P x K = 8 x 4 = 32 random images cut into 2 slices of 16, stage 1 and stage 2 recipes (both train the backbone).

    python benchmarks/ddp_gather_cost.py [--rounds 5] [--steps 20] [--threads 1] [--processes 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace


def _measure(args: argparse.Namespace) -> None:
    import torch

    from graft_edge.config import get_preset
    from graft_edge.model import build_model
    from graft_edge.train.distributed import DistEnv, barrier, init_distributed, shutdown_distributed
    from graft_edge.train.loop import make_stage, set_train_mode, train_step

    env = init_distributed()
    torch.set_num_threads(args.threads)
    cfg = get_preset("synthetic")
    P, K = cfg.data.ids_per_batch, cfg.data.instances_per_id
    n, lo, hi = P * K, P * K * env.rank // env.world_size, P * K * (env.rank + 1) // env.world_size
    gen = torch.Generator().manual_seed(0)
    images = {m: torch.randn(n, 3, *cfg.model.img_size, generator=gen)[lo:hi] for m in cfg.model.modalities}
    labels = torch.arange(P).repeat_interleave(K)[lo:hi]
    local = DistEnv(device=env.device)  # world of 1: no gather, this slice's loss only
    for name in ("stage1", "stage2"):
        torch.manual_seed(0)
        model = build_model(replace(cfg.model, num_ids=32))
        stage = getattr(cfg.train, name)
        run = make_stage(model, stage, 10**6, env)
        set_train_mode(model, stage)
        objective = run.objective.module if env.distributed else run.objective
        rates: dict[str, list[float]] = {"gathered": [], "per-slice": []}
        for r in range(args.rounds):
            order = ("gathered", "per-slice") if r % 2 == 0 else ("per-slice", "gathered")
            for variant in order:
                objective.env = env if variant == "gathered" else local
                for _ in range(2):
                    train_step(run, images, labels)
                barrier(env)
                start = time.perf_counter()
                for _ in range(args.steps):
                    train_step(run, images, labels)
                barrier(env)
                rates[variant].append(args.steps / (time.perf_counter() - start))
        if env.is_main:
            g, s = statistics.median(rates["gathered"]), statistics.median(rates["per-slice"])
            ratios = sorted(a / b for a, b in zip(rates["gathered"], rates["per-slice"]))  # round by round
            print(f"{name}: gathered {g:.2f} steps/s, per-slice {s:.2f} steps/s (medians of {args.rounds} rounds of "
                  f"{args.steps} steps, {env.world_size} processes x {args.threads} thread(s)); gathered / per-slice "
                  f"per round: median {statistics.median(ratios):.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}",
                  flush=True)
    shutdown_distributed()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved rounds per variant (medians are reported).")
    ap.add_argument("--steps", type=int, default=20, help="Timed optimizer steps per round.")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process.")
    ap.add_argument("--processes", type=int, default=2, help="Processes (gloo); not --nproc, which torchrun would take for its own --nproc-per-node.")
    args = ap.parse_args()
    if "LOCAL_RANK" in os.environ:
        _measure(args)
        return
    from torch.distributed.run import main as torchrun

    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # gloo on the CPU
    torchrun(["--standalone", f"--nproc_per_node={args.processes}", os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    main()
