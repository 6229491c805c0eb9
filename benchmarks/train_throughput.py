"""Training throughput (samples/s) of the real train step on this machine, variants side by side in one run.

Measures `graft_edge.train.loop.train_step` (forward, losses, backward, AdamW, schedule) on random
tensors, so data loading is excluded:
  * synthetic preset (tiny ViT, 32x64), stage 1 recipe, batch P x K = 8 x 4;
  * rgbnt100 preset (DeiT-B + 3 encoders, 224x224, pretrained=False), stage 1 (backbone frozen)
    and stage 2 (all trainable), small batch;
  * DDP on CPU (gloo): the synthetic step in 2 processes x 1 thread vs 1 process x 1 thread and
    1 process x 2 threads (global samples/s; each rank runs the full per-rank batch).

    python benchmarks/train_throughput.py                 # everything (~2-4 min on 2 cores)
    python benchmarks/train_throughput.py --skip-full     # synthetic + DDP only
    python benchmarks/train_throughput.py --device cuda   # on an NVIDIA GPU: rgbnt100 fp32 vs bf16 autocast
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace

import torch
import torch.multiprocessing as mp

from graft_edge.config import GraftConfig, StageConfig, get_preset
from graft_edge.model import build_model
from graft_edge.train.distributed import DistEnv
from graft_edge.train.loop import make_stage, set_train_mode, train_step


def random_batch(cfg: GraftConfig, ids: int, per_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{modality: (ids*per_id, 3, H, W)} normal noise and P x K labels."""
    H, W = cfg.model.img_size
    g = torch.Generator().manual_seed(0)
    images = {m: torch.randn(ids * per_id, 3, H, W, generator=g) for m in cfg.model.modalities}
    return images, torch.arange(ids).repeat_interleave(per_id)


def time_steps(cfg: GraftConfig, stage: StageConfig, ids: int, per_id: int, steps: int, warmup: int,
               env: DistEnv | None = None, amp: bool = False) -> float:
    """Seconds per train step (median of `steps` after `warmup`) of cfg's model at a P x K batch."""
    env = env or DistEnv()
    cuda = env.device.startswith("cuda")
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, num_ids=max(ids, 2), pretrained=False)).to(env.device)
    run = make_stage(model, stage, total_steps=warmup + steps, env=env, amp=amp)
    set_train_mode(model, stage)
    images, labels = random_batch(cfg, ids, per_id)
    if cuda:  # inputs already on the GPU: time the step, not the host-to-device copy
        images, labels = {m: x.to(env.device) for m, x in images.items()}, labels.to(env.device)
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(env.device)
        t0 = time.perf_counter()
        train_step(run, images, labels)
        if cuda:
            torch.cuda.synchronize(env.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _ddp_worker(rank: int, world: int, port: int, steps: int, warmup: int, out: dict) -> None:
    """One gloo rank timing the synthetic step; rank 0 reports seconds per step."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    cfg = get_preset("synthetic")
    sec = time_steps(cfg, cfg.train.stage1, cfg.data.ids_per_batch, cfg.data.instances_per_id, steps, warmup,
                     DistEnv(rank=rank, world_size=world, local_rank=rank, device="cpu"))
    if rank == 0:
        out["sec"] = sec
    torch.distributed.destroy_process_group()


def ddp_seconds(world: int, steps: int, warmup: int, port: int = 29633) -> float:
    """Seconds per step of `world` gloo processes (1 thread each) on the synthetic preset."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(world, port, steps, warmup, out), nprocs=world, join=True)
        return float(out["sec"])


def measure_cuda(args: argparse.Namespace, row) -> None:
    """On an NVIDIA GPU: the synthetic and the full-size preset, fp32 vs bf16 autocast, both stages."""
    env = DistEnv(device="cuda:0")
    syn, full = get_preset("synthetic"), get_preset("rgbnt100")
    B = syn.data.ids_per_batch * syn.data.instances_per_id
    for amp in (False, True):
        tag = "bf16" if amp else "fp32"
        row(f"synthetic stage1 cuda {tag}", B, 0, 1,
            time_steps(syn, syn.train.stage1, syn.data.ids_per_batch, syn.data.instances_per_id, args.steps,
                       args.warmup, env, amp))
        ids, per_id = 8, 4  # P x K = 32, near the paper's 26 triplets per batch
        for st_name, st in (("stage1 frozen backbone", full.train.stage1), ("stage2 all trainable", full.train.stage2)):
            row(f"rgbnt100 224x224 {st_name} cuda {tag}", ids * per_id, 0, 1,
                time_steps(full, st, ids, per_id, args.full_steps, 2, env, amp))


def measure(args: argparse.Namespace) -> list[dict]:
    """All rows: name, batch, threads, processes, seconds/step, samples/s."""
    rows = []
    syn = get_preset("synthetic")
    B = syn.data.ids_per_batch * syn.data.instances_per_id

    def row(name: str, batch: int, threads: int, procs: int, sec: float) -> None:
        rows.append({"variant": name, "batch_per_rank": batch, "threads": threads, "processes": procs,
                     "sec_per_step": sec, "samples_per_s": batch * procs / sec})
        print(f"  {name:38s} {batch * procs / sec:9.2f} samples/s  ({sec * 1000:.0f} ms/step)", flush=True)

    if args.device.startswith("cuda"):
        measure_cuda(args, row)
        return rows
    for threads in (1, 2):
        torch.set_num_threads(threads)
        row(f"synthetic stage1, 1 proc x {threads} thr", B, threads, 1,
            time_steps(syn, syn.train.stage1, syn.data.ids_per_batch, syn.data.instances_per_id, args.steps, args.warmup))
    row("synthetic stage1, DDP gloo 2 proc x 1 thr", B, 1, 2, ddp_seconds(2, args.steps, args.warmup))
    if not args.skip_full:
        torch.set_num_threads(os.cpu_count() or 1)
        full = get_preset("rgbnt100")
        ids, per_id = 2, args.full_per_id
        for st_name, st in (("stage1 frozen backbone", full.train.stage1), ("stage2 all trainable", full.train.stage2)):
            row(f"rgbnt100 224x224 {st_name}", ids * per_id, torch.get_num_threads(), 1,
                time_steps(full, st, ids, per_id, args.full_steps, 1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per synthetic variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--skip-full", action="store_true", help="skip the rgbnt100 (DeiT-B, 224x224) rows")
    parser.add_argument("--full-steps", type=int, default=3, help="timed steps per rgbnt100 variant")
    parser.add_argument("--full-per-id", type=int, default=2, help="rgbnt100 batch = 2 ids x this")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: GPU rows only (fp32 vs bf16 autocast)")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""
    print(f"training throughput on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{gpu}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}, load avg {os.getloadavg()[0]:.1f}")
    rows = measure(args)
    if args.device.startswith("cuda"):
        by = {r["variant"]: r["samples_per_s"] for r in rows}
        for name in [n for n in by if n.endswith("fp32")]:
            print(f"bf16 / fp32 {name[:-5]}: {by[name[:-4] + 'bf16'] / by[name]:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(0), "rows": rows}, f, indent=2)
        return
    base = {r["variant"]: r["samples_per_s"] for r in rows}
    one = base["synthetic stage1, 1 proc x 1 thr"]
    print(f"ratios vs synthetic 1 proc x 1 thr: 1x2 thr {base['synthetic stage1, 1 proc x 2 thr'] / one:.2f}x, "
          f"DDP 2x1 {base['synthetic stage1, DDP gloo 2 proc x 1 thr'] / one:.2f}x")
    full = [r for r in rows if r["variant"].startswith("rgbnt100")]
    if len(full) == 2:
        print(f"rgbnt100: stage1 (frozen) / stage2 (full) = {full[0]['samples_per_s'] / full[1]['samples_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_avg": os.getloadavg()[0], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
