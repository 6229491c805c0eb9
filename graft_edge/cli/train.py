"""`train`: two-stage GraFT training of a preset or config file on a dataset, single process or DDP via torchrun."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
import typer

from graft_edge.cli.common import console, guarded
from graft_edge.config import GraftConfig, apply_overrides, config_from_dict, get_preset
from graft_edge.errors import GraftError
from graft_edge.evaluation import score_line
from graft_edge.fileio import read_yaml
from graft_edge.train import run_training
from graft_edge.train.distributed import Rendezvous, check_devices_per_node, elastic_flags, launch_module, torchrun_args
from graft_edge.train.rundir import RunPaths, check_run_dir
from graft_edge.train.runner import preflight


def resolve_config(preset: str | None, config: Path | None, sets: list[str], resume: bool, out: Path) -> GraftConfig:
    """Exactly one of --preset/--config (with --resume, neither means RUN/config.yaml), then the --set overrides."""
    if preset and config:
        raise GraftError("pass either --preset NAME or --config FILE, not both")
    if config is not None or (not preset and resume and (out / "config.yaml").is_file()):
        path = config if config is not None else out / "config.yaml"
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise GraftError(f"config file {path} must hold a mapping of config keys, got {type(data).__name__}")
        try:
            cfg = config_from_dict(data)
        except GraftError as exc:
            raise GraftError(f"config file {path}: {exc}") from None
    elif preset:
        cfg = get_preset(preset)
    else:
        raise GraftError("pass --preset NAME (rgbnt100, rgbn300, synthetic, synthetic-robust, ...) or --config FILE")
    return apply_overrides(cfg, sets)


def _worker_args(preset: str | None, config: Path | None, data: Path, out: Path, sets: list[str], resume: bool,
                 overwrite: bool, max_steps: int | None, checkpoint_steps: int, threads: int | None) -> list[str]:
    """The `train` command line each torchrun worker runs (absolute paths, no launcher options)."""
    args = ["train", "--data", str(data.resolve()), "--out", str(out.resolve()),
            "--checkpoint-steps", str(checkpoint_steps)]
    if preset:
        args += ["--preset", preset]
    if config is not None:
        args += ["--config", str(config.resolve())]
    for item in sets:
        args += ["--set", item]
    if resume:
        args.append("--resume")
    if overwrite:
        args.append("--overwrite")
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    if threads is not None:
        args += ["--threads", str(threads)]
    return args


@guarded
def train_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset root in the RGBNT100/RGBN300 layout (train split to learn, query/gallery to evaluate)."),
    out: Path = typer.Option(..., "--out", help="Run directory: config.yaml, metrics.jsonl, tb/, stage1_best.pt, stage2_best.pt, best.pt, last.pt."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Start from a preset: rgbnt100, rgbn300 (the authors' recipe), rgbnt100-dinov2, rgbnt100-clip (other backbones, same recipe), synthetic (tiny, trains on a CPU in minutes), or rgbnt100-robust / synthetic-robust (the same with train.modality_dropout=0.5: half the samples lose a random non-empty strict subset of their sensors, so the model works with any sensor missing)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Start from a YAML config file (e.g. a previous RUN/config.yaml) instead of --preset."),
    sets: list[str] = typer.Option([], "--set", help="Override a config key, repeatable: --set train.stage1.epochs=5; --set model.modalities=rgb,nir builds and trains on those sensors only (a specialist); --set train.modality_dropout=0.5 drops sensors per sample (probability, 0-1); --set train.teacher_file=PLAIN/best.pt distils from a trained model seeing every sensor."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes per node; > 1 relaunches through torchrun (DDP: NCCL on GPUs, gloo on CPU)."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Nodes in a multi-node job (run the same command on each)."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This node's index, 0..nnodes-1 (multi-node only)."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="Address of node 0 (multi-node only)."),
    master_port: int = typer.Option(29500, "--master-port", help="TCP port on node 0 for the rendezvous (multi-node only)."),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help="When a process dies (OOM, a lost node), restart all of this node's processes up to N times (torchrun's elastic agent); they continue from the last last.pt (written every --checkpoint-steps steps), no --resume needed. 0: the run fails."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="Multi-node: HOST[:PORT] of the rendezvous (c10d: a TCP store started on that host, default port 29400); run the same command on every node, node ranks are assigned by the rendezvous (no --node-rank/--master-addr). Needed for --max-restarts across nodes."),
    rdzv_backend: str = typer.Option("c10d", "--rdzv-backend", help="Rendezvous backend with --rdzv-endpoint: c10d (torch's TCP store), etcd or etcd-v2."),
    rdzv_id: str = typer.Option("graft-edge", "--rdzv-id", help="Job id with --rdzv-endpoint: the same on every node of one job, another for a concurrent job."),
    resume: bool = typer.Option(False, "--resume", help="Continue the killed run in --out from its last.pt (same config, same process count)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a non-empty --out (deletes only the files a run writes)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cap each stage at N optimizer steps (quick runs; the lr schedule fits the cap). Default: no cap."),
    checkpoint_steps: int = typer.Option(500, "--checkpoint-steps", min=0, help="Also write last.pt every N optimizer steps inside an epoch (0: only at epoch ends)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per process (default: PyTorch's, i.e. all cores; torchrun workers default to 1)."),
) -> None:
    """Train GraFT in two stages (paper §4.1/§5.2): stage 1 from the initial model, stage 2 from stage 1's best.

    Evaluates every train.eval_every epochs and at each stage's end on the validation split (data.val_fraction
    of the training ids, held out) and on query/gallery (test, reported only); RUN/best.pt is the delivered
    model (stage 2's best by validation mAP), usable by `graft-edge eval`/`export`/`prune`.
    """
    rdzv = Rendezvous(rdzv_endpoint, rdzv_backend, rdzv_id) if rdzv_endpoint is not None else None
    launcher = torchrun_args(nproc, nnodes, node_rank, master_addr, master_port, max_restarts, rdzv)  # checks them
    under_torchrun = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
    if under_torchrun:  # a worker restarted by the elastic agent continues the run from its last.pt
        resume, overwrite = elastic_flags(RunPaths(out).last, resume, overwrite)
    cfg = resolve_config(preset, config, sets, resume, out)
    if (nproc > 1 or nnodes > 1 or max_restarts > 0) and not under_torchrun:
        check_run_dir(RunPaths(out), resume, overwrite)
        check_devices_per_node(nproc)
        preflight(cfg, data, nproc * nnodes)  # one clear error here instead of one per rank
        launch_module(launcher, _worker_args(preset, config, data, out, sets, resume, overwrite, max_steps,
                                             checkpoint_steps, threads))
        return
    if threads is not None:
        torch.set_num_threads(threads)

    result = run_training(cfg, data, out, resume=resume, overwrite=overwrite, max_steps=max_steps, progress=True,
                          checkpoint_steps=checkpoint_steps)
    if not result.metrics and int(os.environ.get("RANK", 0)) != 0:
        return
    m = result.metrics
    score = (f"{score_line(m)} (stage {m.get('stage')} epoch {m.get('epoch')}, chosen on "
             f"{m.get('selected_on', 'mAP')})") if "mAP" in m else "no evaluation ran"
    console().print(f"{result.best}: {score}; {result.steps} steps in {result.seconds:.0f} s", soft_wrap=True)
