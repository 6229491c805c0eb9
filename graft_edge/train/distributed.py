"""torch.distributed plumbing: the process's place in the job, collectives that degrade to no-ops, torchrun launch.

One code path for every case: a plain process is rank 0 of a world of 1; under torchrun
(RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process group uses NCCL on GPUs and gloo on
CPU. Launching N processes goes through torchrun's own API (`torch.distributed.run.main`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist

from graft_edge.errors import GraftError
from graft_edge.signals import LAUNCHER_PID_ENV, Interrupted, die_with_parent


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is in use."""
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables (0, 1, 0 without them)."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise GraftError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None


def pick_device(local_rank: int) -> str:
    """cuda:LOCAL_RANK when a GPU is visible, else cpu."""
    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


def init_distributed(timeout_min: float = 60.0) -> DistEnv:
    """Join the torchrun process group if there is one (NCCL on GPU, gloo on CPU); idempotent."""
    rank, world, local = env_world()
    if world > 1:  # a rank whose launcher is killed must not train on as an orphan
        launcher = os.environ.get(LAUNCHER_PID_ENV, "")
        die_with_parent(int(launcher) if launcher.isdigit() else None)
    device = pick_device(local)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown_distributed() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in a single process)."""
    if env.distributed:
        if env.device.startswith("cuda"):
            dist.barrier(device_ids=[torch.device(env.device).index])
        else:
            dist.barrier()


def all_reduce_sum(env: DistEnv, values: Sequence[float]) -> list[float]:
    """Sum a few numbers over all ranks (one collective)."""
    if not env.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list in a single process)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(env: DistEnv, module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (e.g. BN running stats after the last step)."""
    if not env.distributed:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def check_devices_per_node(nproc: int) -> None:
    """With GPUs visible, every rank of a node needs its own (NCCL refuses two ranks on one GPU)."""
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise GraftError(f"--nproc {nproc} needs {nproc} GPUs on this node but {torch.cuda.device_count()} are visible: "
                         "lower --nproc, or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run the ranks on the CPU (gloo)")


def torchrun_args(nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                  master_port: int = 29500) -> list[str]:
    """torchrun's launcher options for N processes per node (standalone rendezvous on one node)."""
    if nproc < 1 or nnodes < 1:
        raise GraftError(f"--nproc {nproc} / --nnodes {nnodes}: expected positive integers")
    if not 0 <= node_rank < nnodes:
        raise GraftError(f"--node-rank {node_rank} is not in 0..{nnodes - 1} (--nnodes {nnodes})")
    if not 1 <= master_port <= 65535:
        raise GraftError(f"--master-port {master_port}: expected a TCP port in 1..65535")
    args = [f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        return args + ["--standalone"]
    return args + [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                   f"--master_port={master_port}"]


def launch_module(launcher_args: list[str], module_args: list[str]) -> None:
    """Run `python -m graft_edge MODULE_ARGS` under torchrun; a failed rank becomes one GraftError line."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    before = os.environ.get(LAUNCHER_PID_ENV)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # the ranks check they are still our children
    try:
        torchrun_main([*launcher_args, "--module", "graft_edge", *module_args])
    except SignalException as exc:  # torchrun stopped the ranks on SIGTERM/SIGINT: as Ctrl-C
        raise Interrupted(int(exc.sigval)) from None
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        rank, info = failures[0] if failures else (-1, None)
        code = getattr(info, "exitcode", "?")
        raise GraftError(f"distributed training failed: rank {rank} exited with code {code} "
                         "(its own error line is printed above)") from None
    finally:
        if before is None:
            os.environ.pop(LAUNCHER_PID_ENV, None)
        else:
            os.environ[LAUNCHER_PID_ENV] = before
