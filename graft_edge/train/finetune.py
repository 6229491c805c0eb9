"""Finetune an existing (possibly pruned or masked) model in place with one stage's recipe."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft_edge.config import GraftConfig, StageConfig
from graft_edge.data import build_eval_loaders, build_train_loader
from graft_edge.distill import DistillConfig, Distiller
from graft_edge.errors import GraftError
from graft_edge.evaluation import evaluate_model
from graft_edge.model.graft import GraFT
from graft_edge.train.distributed import DistEnv
from graft_edge.train.loop import AfterStep, make_stage, run_epoch, set_train_mode
from graft_edge.train.state import seed_everything


def finetune(
    model: GraFT,
    cfg: GraftConfig,
    data_root: str | Path,
    epochs: int,
    stage: StageConfig | None = None,
    eval_at_end: bool = True,
    after_step: AfterStep | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig | None = None,
) -> tuple[GraFT, dict[str, Any]]:
    """Train `model` in place for `epochs` with a stage recipe (default cfg.train.stage2); returns it and metrics.

    The model is never rebuilt (pruned widths survive); data preprocessing follows `model.cfg`.
    `after_step(model)` runs after every optimizer step (e.g. to re-apply pruning masks).
    Single process, on the device the model's parameters are on; the model is left in eval mode
    with its original requires_grad flags. Metrics: epochs, steps, loss parts (last epoch), seconds,
    and mAP/R1/R5/R10 (fractions) when eval_at_end. Seeded (cfg.train.seed, or `seed`): the same call on
    the same weights gives the same weights, so an interrupted prune resumes to an identical model.
    With a `teacher` (e.g. the model before a pruning cut) the loss adds distillation terms per `distill`
    (default DistillConfig()); the teacher is moved to the model's device, frozen, and left out of the model.
    """
    if epochs < 0:
        raise GraftError(f"finetune epochs={epochs}: expected 0 or more")
    seed_everything(cfg.train.seed if seed is None else seed)  # augmentation and dropout draws
    stage = replace(stage if stage is not None else cfg.train.stage2, epochs=int(epochs))
    env = DistEnv(device=str(next(model.parameters()).device))
    distiller = Distiller(teacher.to(env.device), distill or DistillConfig()) if teacher is not None else None
    data_cfg = replace(cfg, model=model.cfg)
    loader, sampler, num_ids = build_train_loader(data_root, data_cfg)
    width = model.head.classifier.out_features
    if num_ids != width:
        raise GraftError(f"data root {data_root} has {num_ids} training ids but the model's classifier has {width}")
    total = epochs * sampler.batches_per_epoch
    total = min(total, max_steps) if max_steps is not None else total
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    metrics: dict[str, Any] = {"epochs": int(epochs), "steps": 0}
    start = time.perf_counter()
    try:
        run = make_stage(model, stage, total, env, amp=cfg.train.amp, after_step=after_step,
                         distiller=distiller)
        set_train_mode(model, stage)
        for epoch in range(epochs):
            if run.stage_step >= total:
                break
            sampler.set_epoch(epoch)
            metrics.update(run_epoch(run, loader).reduced(env))
        metrics["steps"] = run.stage_step
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
        model.eval()
    metrics["seconds"] = time.perf_counter() - start
    if eval_at_end:
        query, gallery = build_eval_loaders(data_root, model.cfg, cfg.data.eval_batch_size, cfg.data.num_workers)
        with torch.no_grad():
            metrics.update(evaluate_model(model, query, gallery))
    return model, metrics
