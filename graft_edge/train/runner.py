"""`run_training`: the two-stage GraFT recipe (paper §4.1, §5.2) with DDP, evaluation, best/last checkpoints, resume.

Stage 1 trains from the initial model (backbone frozen per its StageConfig); stage 2 starts from
stage 1's best checkpoint. "Best" is by validation mAP (held-out training ids, data.val_fraction) and
falls back to the query/gallery test mAP only when validation is disabled; the test split is otherwise
only reported. Evaluation runs on rank 0 only while the other ranks wait at a barrier. Only rank 0
writes files or prints.
"""
from __future__ import annotations

import functools
import gc
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from graft_edge.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from graft_edge.config import GraftConfig, StageConfig, config_to_dict, validate
from graft_edge.data import build_eval_loaders, build_train_loader, build_val_loaders
from graft_edge.errors import GraftError
from graft_edge.evaluation import METRIC_KEYS, evaluate_model, score_line
from graft_edge.fileio import atomic_write, read_yaml, write_json, write_yaml
from graft_edge.finite import check_weights
from graft_edge.model.graft import GraFT, build_model
from graft_edge.outdir import OutputLock
from graft_edge.train import distributed
from graft_edge.train.distill import Distiller
from graft_edge.train.loop import (
    StageRun,
    StepInfo,
    load_stage_state,
    make_stage,
    run_epoch,
    set_train_mode,
    stage_state,
)
from graft_edge.train.modality_dropout import modality_dropout
from graft_edge.train.rundir import RunLogger, RunPaths, check_run_dir, clean_run_temps, clear_run_dir, truncate_metrics
from graft_edge.train.state import require_same_config, rng_state, seed_everything, set_rng_state
from graft_edge.train.teacher import training_teacher

STATE_FORMAT = "graft-edge-train-state"
DEFAULT_CHECKPOINT_STEPS = 500
EvalHook = Callable[[Mapping[str, Any]], None]  # rank 0, after each evaluation, with its metrics.jsonl row


@dataclass
class TrainResult:
    """What a finished run produced (metrics are filled on rank 0 only)."""

    run_dir: Path
    best: Path  # RUN/best.pt, the delivered model (stage 2's best, or stage 1's when stage 2 has no steps)
    metrics: dict[str, Any]  # test mAP/R1/R5/R10 and val_mAP/... (fractions) of best.pt, with its stage/epoch/step
    stage_best: dict[int, float]  # best selection mAP per stage (val, or test without validation; -1: none)
    steps: int  # optimizer steps over both stages
    seconds: float
    num_ids: int


@dataclass
class Position:
    """Where the run stands: stage (3 = finished), epoch in the stage, batches done in it, global steps."""

    stage: int = 1
    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class Trainer:
    """The state of one run shared by the stage functions."""

    cfg: GraftConfig
    env: distributed.DistEnv
    paths: RunPaths
    loader: Any
    sampler: Any
    eval_loaders: tuple[Any, Any] | None
    val_loaders: tuple[Any, Any] | None
    logger: RunLogger
    model: GraFT
    max_steps: int | None
    checkpoint_steps: int
    pos: Position = field(default_factory=Position)
    best: dict[int, float] = field(default_factory=lambda: {1: -1.0, 2: -1.0})
    resume: Checkpoint | None = None
    on_eval: EvalHook | None = None
    distiller: Distiller | None = None  # train.teacher_file's frozen teacher (both stages)

    @property
    def select_key(self) -> str:
        """The metric best checkpoints are chosen on: val_mAP, or the test mAP when validation is off."""
        return "val_mAP" if self.cfg.data.val_fraction > 0 else "mAP"


def _sampler_epoch(stage: int, epoch: int) -> int:
    """Sampler shuffle index: distinct per stage and epoch."""
    return (stage - 1) * 100_000 + epoch


def _stage_cfg(cfg: GraftConfig, stage: int) -> StageConfig:
    """The StageConfig of stage 1 or 2."""
    return cfg.train.stage1 if stage == 1 else cfg.train.stage2


def stage_steps(cfg: GraftConfig, stage: int, batches_per_epoch: int, max_steps: int | None) -> int:
    """Optimizer steps of a stage: epochs x batches per epoch (per rank), capped by max_steps.

    With data.anchor_repeats > 0 the batches per epoch are global batches (the same for any process
    count), so one GPU and `--nproc N` take the same steps on the same samples.
    """
    total = _stage_cfg(cfg, stage).epochs * batches_per_epoch
    return min(total, max_steps) if max_steps is not None else total


def save_last(tr: Trainer, run: StageRun | None) -> None:
    """RUN/last.pt: model + position + optimiser/scheduler/criterion + sampler + every rank's RNG (collective)."""
    check_weights(tr.model, tr.pos.step)  # a diverged model is never saved, not even as resume state
    gen = getattr(tr.loader, "generator", None)
    mine = {"process": rng_state(), **({"loader": gen.get_state()} if gen is not None else {})}
    rngs = distributed.gather_objects(tr.env, mine)
    if not tr.env.is_main:
        return
    sampler = tr.sampler.state_dict(batches_done=tr.pos.batch)
    sampler["epoch"] = _sampler_epoch(tr.pos.stage, tr.pos.epoch)
    extra: dict[str, Any] = {
        "format": STATE_FORMAT, "stage": tr.pos.stage, "epoch": tr.pos.epoch, "batch": tr.pos.batch,
        "step": tr.pos.step, "sampler": sampler, "rng": rngs, "world_size": tr.env.world_size,
        "best": {str(k): v for k, v in tr.best.items()}, "metrics_lines": tr.logger.lines,
        "max_steps": int(tr.max_steps or 0), "finished": tr.pos.stage > 2,
    }
    if run is not None:
        extra["stage_state"] = stage_state(run)
    save_checkpoint(tr.paths.last, tr.model, tr.cfg, meta={"kind": "last", "stage": tr.pos.stage, "step": tr.pos.step},
                    extra=extra)


def _evaluate(tr: Trainer) -> dict[str, Any] | None:
    """Rank 0 evaluates on validation (val_mAP, ...) and query/gallery test (mAP, ...) while the others wait."""
    metrics = None
    if tr.env.is_main and tr.eval_loaders is not None:
        metrics = dict(evaluate_model(tr.model, *tr.eval_loaders))
        if tr.val_loaders is not None:
            val = evaluate_model(tr.model, *tr.val_loaders)
            metrics.update({f"val_{k}": v for k, v in val.items()})
    distributed.barrier(tr.env)
    return metrics


def _on_step(tr: Trainer, run: StageRun, info: StepInfo) -> None:
    """Count the step, update the bar, and write last.pt every `checkpoint_steps` steps inside an epoch."""
    tr.pos.step += 1
    tr.pos.batch = info.batch
    tr.logger.step(tr.pos.step, info.batch, info.loss, info.samples_per_s, info.lr)
    mid_epoch = info.batch < tr.sampler.batches_per_epoch and run.stage_step < run.total_steps
    if tr.checkpoint_steps > 0 and mid_epoch and run.stage_step % tr.checkpoint_steps == 0:
        save_last(tr, run)


def _restore_rng(tr: Trainer) -> None:
    """This rank's RNG states (process + loader generator) from the resumed last.pt."""
    saved = tr.resume.extra["rng"][tr.env.rank]
    set_rng_state(saved["process"])
    gen = getattr(tr.loader, "generator", None)
    if gen is not None and "loader" in saved:
        gen.set_state(saved["loader"])


def _start_stage(tr: Trainer, stage: int, total: int) -> StageRun:
    """Load the stage's starting weights, build its optimisers (restoring them on resume), set train mode."""
    st = _stage_cfg(tr.cfg, stage)
    ck = tr.resume
    mid = ck is not None and int(ck.extra["stage"]) == stage and "stage_state" in ck.extra
    if mid:
        tr.model.load_state_dict(ck.state_dict)
    elif stage == 2 and tr.env.is_main and tr.paths.stage_best(1).is_file():
        tr.model.load_state_dict(read_checkpoint(tr.paths.stage_best(1)).state_dict)  # DDP broadcasts it
        tr.logger.info(f"stage 2 starts from {tr.paths.stage_best(1)} ({tr.select_key} {100 * tr.best[1]:.2f})")
    per_step = 1 if tr.cfg.data.anchor_repeats else tr.env.world_size  # global batches one step trains on
    dropout = modality_dropout(tr.cfg.train.modality_dropout, len(tr.model.modalities), tr.cfg.train.seed, tr.sampler)
    run = make_stage(tr.model, st, total, tr.env, amp=tr.cfg.train.amp, global_batches_per_step=per_step,
                     distiller=tr.distiller, dropout=dropout, seed=10 * tr.cfg.train.seed + stage)
    if mid:
        load_stage_state(run, ck.extra["stage_state"])
    set_train_mode(tr.model, st)
    return run


def _epoch_row(tr: Trainer, stage: int, epoch: int, run: StageRun, losses: dict[str, float],
               metrics: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """One metrics.jsonl line."""
    m = metrics or {}
    return {"stage": stage, "epoch": epoch + 1, "step": tr.pos.step, "stage_step": run.stage_step,
            "loss": losses["loss"], "triplet": losses["triplet"], "center": losses["center"], "ce": losses["ce"],
            "lr": run.optimizer.param_groups[0]["lr"], **{k: m.get(k) for k in METRIC_KEYS},
            **{f"val_{k}": m.get(f"val_{k}") for k in METRIC_KEYS},
            "samples_per_s": losses["samples_per_s"], "seconds": seconds}


def _after_epoch(tr: Trainer, stage: int, run: StageRun, losses: dict[str, float], seconds: float) -> None:
    """Evaluate when due, log the epoch, keep the stage's best checkpoint, write last.pt when due."""
    cfg, st = tr.cfg, _stage_cfg(tr.cfg, stage)
    epoch, bpe = tr.pos.epoch, tr.sampler.batches_per_epoch
    epoch_done, stage_done = tr.pos.batch >= bpe, run.stage_step >= run.total_steps
    if stage_done:
        distributed.broadcast_module(tr.env, tr.model)  # BN running stats drift per rank after the last step
    every = cfg.train.eval_every
    metrics = _evaluate(tr) if stage_done or (epoch_done and every > 0 and (epoch + 1) % every == 0) else None
    row = _epoch_row(tr, stage, epoch, run, losses, metrics, seconds)
    tr.logger.record(row)
    tr.logger.info(f"stage {stage} epoch {epoch + 1}/{st.epochs} step {tr.pos.step}: loss {losses['loss']:.4f} "
                   f"(triplet {losses['triplet']:.4f} ce {losses['ce']:.4f} center {losses['center']:.4f}) "
                   f"lr {row['lr']:.3g}  {losses['samples_per_s']:.1f} samples/s  {seconds:.1f} s")
    if metrics is not None and tr.env.is_main:
        _keep_best(tr, stage, epoch, metrics)
        if tr.on_eval is not None:
            tr.on_eval(row)
    if epoch_done:
        tr.pos.epoch, tr.pos.batch = epoch + 1, 0
    if stage_done:
        tr.pos.stage, tr.pos.epoch, tr.pos.batch = stage + 1, 0, 0
        save_last(tr, None)
    elif epoch_done and cfg.train.checkpoint_every > 0 and tr.pos.epoch % cfg.train.checkpoint_every == 0:
        save_last(tr, run)


def _keep_best(tr: Trainer, stage: int, epoch: int, metrics: Mapping[str, Any]) -> None:
    """Save stage{N}_best.pt when the selection metric improved; print val and test scores separately."""
    score = float(metrics[tr.select_key])
    better = score > tr.best[stage]
    if better:
        tr.best[stage] = score
        meta = {"kind": f"stage{stage}_best", "stage": stage, "epoch": epoch + 1, "step": tr.pos.step,
                "selected_on": tr.select_key, "score": score,
                **{k: float(v) for k, v in metrics.items() if k.removeprefix("val_") in METRIC_KEYS}}
        save_checkpoint(tr.paths.stage_best(stage), tr.model, tr.cfg, meta=meta)
    tr.logger.info(f"eval stage {stage} epoch {epoch + 1}: {score_line(metrics)}" + ("  (best)" if better else ""))


def run_stage(tr: Trainer, stage: int) -> None:
    """Train one stage to its step count, epoch by epoch (from the resume position when there is one)."""
    st, bpe = _stage_cfg(tr.cfg, stage), tr.sampler.batches_per_epoch
    total = stage_steps(tr.cfg, stage, bpe, tr.max_steps)
    if total == 0:
        tr.pos = Position(stage=stage + 1, step=tr.pos.step)
        return
    resuming = tr.resume is not None and int(tr.resume.extra["stage"]) == stage
    if resuming and "stage_state" not in tr.resume.extra:
        _restore_rng(tr)  # stage start: the uninterrupted run built this stage's criterion after saving
    run = _start_stage(tr, stage, total)
    if resuming:
        if "stage_state" in tr.resume.extra:
            _restore_rng(tr)  # mid-stage: the next draw is the next batch's augmentation, as uninterrupted
        tr.sampler.load_state_dict(tr.resume.extra["sampler"])
        tr.resume = None
    else:
        tr.sampler.set_epoch(_sampler_epoch(stage, tr.pos.epoch), start_batch=tr.pos.batch)
    while run.stage_step < total:
        tr.logger.start_epoch(f"stage {stage} epoch {tr.pos.epoch + 1}/{st.epochs}", bpe, tr.pos.batch)
        stats = run_epoch(run, tr.loader, tr.pos.batch, functools.partial(_on_step, tr, run))
        tr.logger.end_epoch()
        _after_epoch(tr, stage, run, stats.reduced(tr.env), stats.seconds)
        if run.stage_step < total:
            tr.sampler.set_epoch(_sampler_epoch(stage, tr.pos.epoch), start_batch=0)
    del run
    gc.collect()  # drop this stage's DDP reducer hooks before the next stage wraps the model again


def preflight(cfg: GraftConfig, data_root: str | Path, world_size: int = 1) -> int:
    """Check the data before launching workers (train ids vs the sampler, val split, query/gallery); returns num_ids."""
    _, _, num_ids = build_train_loader(data_root, cfg, 0, world_size)
    training_teacher(replace(cfg, model=replace(cfg.model, num_ids=num_ids)))
    build_val_loaders(data_root, cfg, 0)
    build_eval_loaders(data_root, cfg.model, cfg.data.eval_batch_size, 0)
    return num_ids


def _read_resume(paths: RunPaths, env: distributed.DistEnv, max_steps: int | None) -> tuple[Checkpoint, int | None]:
    """last.pt of the run being resumed, checked against this launch; returns it and the run's max_steps."""
    ck = read_checkpoint(paths.last)
    if ck.extra.get("format") != STATE_FORMAT:
        raise GraftError(f"--resume: {paths.last} holds no training state (not written by graft-edge train)")
    saved_world = int(ck.extra["world_size"])
    if saved_world != env.world_size:
        raise GraftError(f"--resume: the run in {paths.root} used {saved_world} process(es) but this launch has "
                         f"{env.world_size}; resume with the same --nproc/--nnodes")
    saved_max = int(ck.extra.get("max_steps", 0)) or None
    if max_steps is not None and max_steps != saved_max:
        raise GraftError(f"--resume: --max-steps {max_steps} differs from the run's {saved_max or 'none'}")
    return ck, saved_max


def _best_map(paths: RunPaths, stage: int, fallback: float) -> float:
    """Selection score recorded in RUN/stage{N}_best.pt (it may be newer than last.pt), else `fallback`."""
    path = paths.stage_best(stage)
    if not path.is_file():
        return fallback
    meta = read_checkpoint(path).meta
    return float(meta.get("score", meta.get("mAP", fallback)))


def _prepare_dir(paths: RunPaths, cfg: GraftConfig, env: distributed.DistEnv, resume: Checkpoint | None,
                 overwrite: bool) -> None:
    """Rank 0 clears (--overwrite) or trims (--resume) the run folder and writes config.yaml; all ranks sync."""
    distributed.barrier(env)
    if env.is_main:
        clean_run_temps(paths)
        if overwrite:
            clear_run_dir(paths)
        paths.root.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            truncate_metrics(paths, int(resume.extra["metrics_lines"]))
        else:
            write_yaml(paths.config, config_to_dict(cfg))
    distributed.barrier(env)


def _finish(tr: Trainer) -> dict[str, Any]:
    """RUN/best.pt := the last stage's best checkpoint (or the current model when no stage evaluated)."""
    if not tr.env.is_main:
        return {}
    source = next((tr.paths.stage_best(s) for s in (2, 1)
                   if tr.paths.stage_best(s).is_file() and tr.best[s] >= 0), None)
    if source is None:
        save_checkpoint(tr.paths.best, tr.model, tr.cfg, meta={"kind": "best"})
        return {}
    atomic_write(tr.paths.best, lambda tmp: shutil.copyfile(source, tmp))
    meta = read_checkpoint(tr.paths.best).meta
    keys = ("stage", "epoch", "step", "selected_on", *METRIC_KEYS, *(f"val_{k}" for k in METRIC_KEYS))
    return {k: meta[k] for k in keys if k in meta}


def _build_trainer(env: distributed.DistEnv, cfg: GraftConfig, data_root: str | Path, paths: RunPaths, resume: bool,
                   overwrite: bool, max_steps: int | None, progress: bool, checkpoint_steps: int) -> Trainer:
    """Check the run folder, read the data, fix num_ids, build the model, restore a resumed position."""
    check_run_dir(paths, resume, overwrite)
    ck, max_steps = _read_resume(paths, env, max_steps) if resume else (None, max_steps)
    seed_everything(cfg.train.seed + env.rank)
    loader, sampler, num_ids = build_train_loader(data_root, cfg, env.rank, env.world_size)
    cfg = validate(replace(cfg, model=replace(cfg.model, num_ids=num_ids)))
    if ck is not None:
        require_same_config(read_yaml(paths.config), config_to_dict(cfg), str(paths.config))
    distiller = training_teacher(cfg, env.device)
    evals = vals = None
    if env.is_main:
        evals = build_eval_loaders(data_root, cfg.model, cfg.data.eval_batch_size, cfg.data.num_workers)
        vals = build_val_loaders(data_root, cfg)
    model = build_model(cfg.model).to(env.device)  # the last check of the config (backbone, weights file): before
    _prepare_dir(paths, cfg, env, ck, overwrite)  # anything is written, so a failed start leaves the folder as it was
    pos = Position()
    if ck is not None:
        x = ck.extra
        pos = Position(int(x["stage"]), int(x["epoch"]), int(x["batch"]), int(x["step"]))
    logger = RunLogger(paths, env.is_main, progress, purge_step=pos.step if ck is not None else None)
    tr = Trainer(cfg, env, paths, loader, sampler, evals, vals, logger, model, max_steps, checkpoint_steps, pos,
                 resume=ck, distiller=distiller)
    if ck is not None:
        tr.best = {s: _best_map(paths, s, float(ck.extra["best"][str(s)])) for s in (1, 2)}
        if pos.stage > 2 or "stage_state" not in ck.extra:
            model.load_state_dict(ck.state_dict)
    return tr


def run_training(
    cfg: GraftConfig,
    data_root: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    checkpoint_steps: int = DEFAULT_CHECKPOINT_STEPS,
    on_eval: EvalHook | None = None,
) -> TrainResult:
    """Two-stage training of cfg on data_root into run_dir; under torchrun every rank calls this (DDP).

    max_steps caps each stage's optimizer steps (the lr schedule is laid out over the capped
    length). checkpoint_steps: also write last.pt every N steps inside an epoch (0: epoch ends only).
    on_eval(row) runs on rank 0 after each evaluation (e.g. a tuner's pruner); an exception it raises
    stops the run (last.pt keeps the position of the previous save).
    """
    if max_steps is not None and max_steps < 1:
        raise GraftError(f"--max-steps {max_steps}: expected a positive integer")
    owns_group = not torch.distributed.is_initialized()
    env = distributed.init_distributed()
    start = time.perf_counter()
    lock = OutputLock(run_dir, "train") if env.is_main else None  # rank 0 writes; it holds the folder's lock
    tr: Trainer | None = None
    try:
        if lock is not None:
            lock.acquire()
        tr = _build_trainer(env, validate(cfg), data_root, RunPaths(Path(run_dir)), resume, overwrite, max_steps,
                            progress, checkpoint_steps)
        tr.on_eval = on_eval
        s = tr.sampler
        tr.logger.info(f"training {tr.cfg.preset} ({','.join(tr.cfg.model.modalities)}) on {data_root}: "
                       f"{tr.cfg.model.num_ids} ids, {s.num_samples} images, {s.batches_per_epoch} batches/epoch "
                       f"x {env.world_size} rank(s) on {env.device}; best checkpoints chosen on {tr.select_key}")
        for stage in (1, 2):
            if tr.pos.stage <= stage:
                run_stage(tr, stage)
        metrics = _finish(tr)
        if env.is_main:
            write_json(tr.paths.root / "result.json", {"best": str(tr.paths.best), "selected_on": tr.select_key,
                                                       "steps": tr.pos.step, "num_ids": tr.cfg.model.num_ids,
                                                       "metrics": metrics})
        distributed.barrier(env)
        tr.logger.close()
        return TrainResult(run_dir=Path(run_dir), best=tr.paths.best, metrics=metrics, stage_best=dict(tr.best),
                           steps=tr.pos.step, seconds=time.perf_counter() - start, num_ids=tr.cfg.model.num_ids)
    finally:
        if tr is not None:
            tr.logger.close()  # also when on_eval stopped the run (TensorBoard files flushed and closed)
        if lock is not None:
            lock.release()
        if owns_group:
            distributed.shutdown_distributed()
