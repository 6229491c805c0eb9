"""Finetune an existing (possibly pruned or masked) model in place with one stage's recipe, keeping the epoch
that scores best on the validation split (held-out training ids); the test split is only reported."""
from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft_edge.config import GraftConfig, StageConfig
from graft_edge.data import build_eval_loaders, build_train_loader, build_val_loaders
from graft_edge.data.reuse import ReusedBatches
from graft_edge.errors import GraftError
from graft_edge.evaluation import evaluate_model, with_prefix
from graft_edge.model.graft import GraFT
from graft_edge.train.distill import DistillConfig, Distiller, check_teacher, model_identity
from graft_edge.train.distributed import DistEnv
from graft_edge.train.loop import AfterStep, make_stage, run_epoch, set_train_mode
from graft_edge.train.modality_dropout import modality_dropout
from graft_edge.train.state import rng_state, seed_everything, set_rng_state


class BestEpoch:
    """Validation after every epoch; keeps a copy of the weights of the best one (by val mAP, first on ties).

    The evaluation runs with the RNG states saved and restored, so training draws the same numbers with or
    without it (choosing never changes the trajectory it chooses from).
    """

    def __init__(self, loaders: tuple[Any, Any]) -> None:
        self.loaders = loaders
        self.best: dict[str, Any] | None = None  # val_* metrics and the epoch of the kept weights
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []  # val mAP per epoch

    def after_epoch(self, model: GraFT, epoch: int) -> None:
        """Evaluate the epoch; keep its weights when its val mAP beats every earlier epoch's."""
        saved = rng_state()
        try:
            with torch.no_grad():
                val = with_prefix(evaluate_model(model, *self.loaders))
        finally:
            set_rng_state(saved)
        self.history.append(float(val["val_mAP"]))
        if self.best is None or val["val_mAP"] > self.best["val_mAP"]:
            self.best = {**val, "best_epoch": epoch + 1}
            self.state = copy.deepcopy(model.state_dict())

    def restore(self, model: GraFT) -> dict[str, Any]:
        """Load the kept weights into `model` in place (same widths: a pruned model stays pruned); its metrics."""
        if self.state is None or self.best is None:
            return {}
        with torch.no_grad():
            for key, value in model.state_dict().items():
                value.copy_(self.state[key])
        return {**self.best, "val_history": list(self.history), "selected_on": "val_mAP"}


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
    select_on_val: bool = True,
) -> tuple[GraFT, dict[str, Any]]:
    """Train `model` in place for `epochs` with a stage recipe (default cfg.train.stage2); returns it and metrics.

    The model is never rebuilt (pruned widths survive); data preprocessing follows `model.cfg`.
    `after_step(model)` runs after every optimizer step (e.g. to re-apply pruning masks), so every epoch's
    weights respect the masks. With `select_on_val` and a validation split (cfg.data.val_fraction > 0) every
    epoch is evaluated on validation and the model ends with the weights of the best epoch (val_mAP,
    val_R1, ..., best_epoch, val_history in the metrics); the test split (mAP/R1/R5/R10, when eval_at_end)
    is evaluated once, on those weights, and never used to choose. Single process, on the device the
    model's parameters are on; the model is left in eval mode with its original requires_grad flags.
    Seeded (cfg.train.seed, or `seed`): the same call on the same weights gives the same weights, so an
    interrupted prune resumes to an identical model. With a `teacher` (e.g. the model before a pruning cut)
    the loss adds distillation terms per `distill` (default DistillConfig()); the teacher is moved to the
    model's device, frozen, and left out of the model. cfg.train.modality_dropout > 0 (a model trained to ride out
    missing sensors) keeps dropping sensors per sample, seeded like the rest; the teacher sees every sensor.
    """
    if epochs < 0:
        raise GraftError(f"finetune epochs={epochs}: expected 0 or more")
    seed = cfg.train.seed if seed is None else seed
    seed_everything(seed)  # augmentation, dropout draws and initial values
    stage = replace(stage if stage is not None else cfg.train.stage2, epochs=int(epochs))
    env = DistEnv(device=str(next(model.parameters()).device))
    if teacher is not None:
        check_teacher(model_identity(teacher), model_identity(model))
    distiller = Distiller(teacher.to(env.device), distill or DistillConfig()) if teacher is not None else None
    data_cfg = replace(cfg, model=model.cfg)
    loader, sampler, num_ids = build_train_loader(data_root, data_cfg)
    width = model.head.classifier.out_features
    if num_ids != width:
        raise GraftError(f"data root {data_root} has {num_ids} training ids but the model's classifier has {width}")
    val = build_val_loaders(data_root, data_cfg, cfg.data.num_workers) if select_on_val and epochs > 0 else None
    val = tuple(ReusedBatches(loader) for loader in val) if val is not None else None  # decoded once, every epoch
    chooser = BestEpoch(val) if val is not None else None
    total = epochs * sampler.batches_per_epoch
    total = min(total, max_steps) if max_steps is not None else total
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    metrics: dict[str, Any] = {"epochs": int(epochs), "steps": 0}
    start = time.perf_counter()
    try:
        dropout = modality_dropout(cfg.train.modality_dropout, len(model.modalities), seed, sampler)
        run = make_stage(model, stage, total, env, amp=cfg.train.amp, after_step=after_step,
                         distiller=distiller, dropout=dropout, seed=seed)
        set_train_mode(model, stage)
        for epoch in range(epochs):
            if run.stage_step >= total:
                break
            sampler.set_epoch(epoch)
            metrics.update(run_epoch(run, loader).reduced(env))
            if chooser is not None:
                chooser.after_epoch(model, epoch)
        metrics["steps"] = run.stage_step
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
        model.eval()
    if chooser is not None:
        metrics.update(chooser.restore(model))
    metrics["seconds"] = time.perf_counter() - start
    if eval_at_end:
        query, gallery = build_eval_loaders(data_root, model.cfg, cfg.data.eval_batch_size, cfg.data.num_workers)
        with torch.no_grad():
            metrics.update(evaluate_model(model, query, gallery))
    return model, metrics
