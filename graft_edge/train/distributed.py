"""torch.distributed plumbing: the process's place in the job, collectives that degrade to no-ops, torchrun launch.

One code path for every case: a plain process is rank 0 of a world of 1; under torchrun
(RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process group uses NCCL on GPUs and gloo on
CPU. Launching N processes goes through torchrun's own API (`torch.distributed.run.main`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
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


class _GatherRows(torch.autograd.Function):
    """Every rank's rows in rank order (slices may differ in length); backward: this rank's rows of the summed gradient.

    Every rank computes the same loss of the gathered batch, so summing the ranks' gradients of a rank's rows
    gives W x its share, and DDP's average over W ranks then leaves the global batch's gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None


def slice_sizes(env: DistEnv, rows: int) -> tuple[int, ...]:
    """Every rank's row count, in rank order (one small collective; `(rows,)` in a single process)."""
    if not env.distributed:
        return (int(rows),)
    mine = torch.tensor([int(rows)], dtype=torch.int64, device=env.device)
    parts = [torch.empty_like(mine) for _ in range(env.world_size)]
    dist.all_gather(parts, mine)
    return tuple(int(p.item()) for p in parts)


def gather_rows(env: DistEnv, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """The global batch from every rank's slice (dim 0, rank order); gradients flow back to each rank's own rows."""
    if not env.distributed:
        return x
    return _GatherRows.apply(x.contiguous(), tuple(int(n) for n in sizes), env.rank)


def sync_batchnorm(model: torch.nn.Module, env: DistEnv, skip: str = "head") -> None:
    """BatchNorm layers outside `skip` (the BNNeck, fed the gathered batch) get global statistics under DDP.

    On GPUs they become torch's SyncBatchNorm; gloo (CPU) has none, so such a model is refused there.
    """
    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not (n == skip or n.startswith(skip + "."))]
    if not env.distributed or not names:
        return
    if not env.device.startswith("cuda"):
        raise GraftError(f"the model has BatchNorm layers outside the BNNeck ({names[0]}, ...), whose statistics "
                         "cannot be synchronised across CPU (gloo) processes: train it with --nproc 1 or on GPUs")
    for name, child in list(model.named_children()):
        if name != skip:
            setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


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


FRESH_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"  # torchrun: rank 0 hosts a new store each attempt
RDZV_BACKENDS = ("c10d", "etcd", "etcd-v2")  # torchrun's rendezvous backends that support restarts


@dataclass(frozen=True)
class Rendezvous:
    """A multi-node rendezvous endpoint (torchrun's --rdzv-backend/--rdzv-endpoint/--rdzv-id)."""

    endpoint: str  # HOST[:PORT] of the rendezvous (c10d: a TCP store on that host; default port 29400)
    backend: str = "c10d"
    job_id: str = "graft-edge"  # the same on every node of one job


def torchrun_args(nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                  master_port: int = 29500, max_restarts: int = 0, rdzv: Rendezvous | None = None) -> list[str]:
    """torchrun's launcher options: standalone on one node, a rendezvous endpoint, or static master address.

    `max_restarts` > 0: torchrun's elastic agent restarts every process of the node up to that many times when one
    dies; each restarted worker resumes the run from its last.pt (`elastic_flags`).
    """
    if nproc < 1 or nnodes < 1:
        raise GraftError(f"--nproc {nproc} / --nnodes {nnodes}: expected positive integers")
    if not 0 <= node_rank < nnodes:
        raise GraftError(f"--node-rank {node_rank} is not in 0..{nnodes - 1} (--nnodes {nnodes})")
    if not 1 <= master_port <= 65535:
        raise GraftError(f"--master-port {master_port}: expected a TCP port in 1..65535")
    if max_restarts < 0:
        raise GraftError(f"--max-restarts {max_restarts}: expected 0 or more")
    if max_restarts and nnodes > 1 and rdzv is None:
        raise GraftError("--max-restarts on several nodes needs a rendezvous that survives a restart: pass "
                         "--rdzv-endpoint HOST:PORT instead of --master-addr/--node-rank")
    args = [f"--nproc_per_node={nproc}"]
    if rdzv is not None:
        if rdzv.backend not in RDZV_BACKENDS:
            raise GraftError(f"--rdzv-backend {rdzv.backend!r}: expected one of {', '.join(RDZV_BACKENDS)}")
        if not rdzv.endpoint.strip():
            raise GraftError("--rdzv-endpoint is empty: expected HOST[:PORT] of the rendezvous (e.g. node0:29400)")
        args += [f"--nnodes={nnodes}", f"--rdzv-backend={rdzv.backend}", f"--rdzv-endpoint={rdzv.endpoint}",
                 f"--rdzv-id={rdzv.job_id}"]
    elif nnodes == 1:
        args.append("--standalone")
    else:
        args += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
                 f"--master_port={master_port}"]
    return args + ([f"--max-restarts={max_restarts}"] if max_restarts else [])


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this worker group (0 on the first attempt)."""
    value = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def elastic_flags(last_checkpoint: Path, resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) for this worker: a restarted one continues from `last_checkpoint`, or starts over.

    On the first attempt the command's own flags hold. After a restart the run folder holds what the failed
    attempt wrote: resume from its last.pt when there is one, else start over (--overwrite only deletes files a
    run writes). The folder must be one every node sees when the nodes are several.
    """
    if restart_count() == 0:
        return resume, overwrite
    found = last_checkpoint.is_file()
    return found, not found


def launch_module(launcher_args: list[str], module_args: list[str]) -> None:
    """Run `python -m graft_edge MODULE_ARGS` under torchrun; a failed rank becomes one GraftError line."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    before = {k: os.environ.get(k) for k in (LAUNCHER_PID_ENV, FRESH_STORE_ENV)}
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # the ranks check they are still our children
    # a store of its own for every attempt: with the agent's store shared across restarts (torch's default), a
    # restarted rank can read the failed attempt's gloo/NCCL addresses from it and fail to connect
    os.environ.setdefault(FRESH_STORE_ENV, "1")
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
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
