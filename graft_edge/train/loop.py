"""One training stage: freezing, optimisers (AdamW + SGD for the centers), the step, the epoch, evaluation.

Shared by the two-stage `run_training` (with DDP, checkpoints, logging) and `finetune` (an
existing, possibly pruned model in a single process).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from graft_edge.config import StageConfig
from graft_edge.finite import check_loss, check_weights
from graft_edge.model.backbone import unused_modules
from graft_edge.model.graft import GraFT, GraftOutput
from graft_edge.train.distill import Distiller, distill_loss
from graft_edge.train.distributed import DistEnv, all_reduce_sum, gather_rows, slice_sizes, sync_batchnorm
from graft_edge.train.losses import GraftLoss, LossParts
from graft_edge.train.modality_dropout import ModalityDropout
from graft_edge.train.schedule import build_scheduler

AfterStep = Callable[[GraFT], None]
OnStep = Callable[["StepInfo"], None]


class Objective(nn.Module):
    """model + criterion in one module, so DDP also averages the center-loss centers' gradients.

    The loss is the global batch's at any process count: each process runs the model on its slice, the tokens
    (and labels, and presence masks) of every slice are gathered, and the BNNeck, classifier and every loss term run
    on the whole batch on every process (the BatchNorm sees the global batch's statistics; triplets are mined across
    slices); the gather sends each process the summed gradient of its own rows, so DDP's average is the global-batch
    gradient, also when slices differ in size. With a `distiller` the loss adds its teacher terms; the distiller
    is a plain attribute, so the teacher is not a submodule (not in state_dict, parameters or DDP's buckets). With a
    presence mask (modality dropout) the student sees each sample's kept modalities only and the teacher every
    modality.
    """

    def __init__(self, model: GraFT, criterion: GraftLoss, distiller: Distiller | None = None,
                 env: DistEnv | None = None) -> None:
        super().__init__()
        self.model, self.criterion, self.distiller = model, criterion, distiller
        self.env = env or DistEnv()

    def forward(self, images: Mapping[str, torch.Tensor], labels: torch.Tensor,
                present: torch.Tensor | None = None, generator: torch.Generator | None = None) -> LossParts:
        """images {modality: (B, 3, H, W)}, labels (B,) of this process's slice, optional (B, M) presence mask ->
        the global batch's loss and parts."""
        sizes = slice_sizes(self.env, len(labels))
        out = global_outputs(self.model, images, self.env, sizes, present)
        labels = gather_rows(self.env, labels, sizes)
        parts = self.criterion(out, labels, generator)
        if self.distiller is None:
            return parts
        self.distiller.teacher.eval()
        with torch.no_grad():
            teacher = global_outputs(self.distiller.teacher, images, self.env, sizes)
        dist = distill_loss(out, teacher, self.distiller.cfg, self.model.cfg.neck_feat)
        return parts._replace(total=parts.total + dist.total, distill=dist.total.detach())


def global_outputs(model: GraFT, images: Mapping[str, torch.Tensor], env: DistEnv, sizes: tuple[int, ...],
                   present: torch.Tensor | None = None) -> GraftOutput:
    """The model's outputs for the global batch: tokens of this slice, gathered (one collective), then the head.

    With a (B, M) presence mask every modality's tokens are computed and each row averages its present ones."""
    fusion, data = model.tokens(images) if present is None else model.modality_tokens(images)  # (B, M, D) each
    if env.distributed:
        both = gather_rows(env, torch.cat([fusion, data], dim=-1), sizes)
        fusion, data = both.split(fusion.shape[-1], dim=-1)
        present = gather_rows(env, present, sizes) if present is not None else None
    return model.outputs(fusion, data, present)


def triplet_generator(seed: int, step: int) -> torch.Generator:
    """The random-triplet draws of one optimizer step: a pure function of (seed, step), the same on every process."""
    state = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


@dataclass
class StageRun:
    """Everything the steps of one stage need; `objective` is DDP-wrapped when distributed."""

    model: GraFT
    criterion: GraftLoss
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    center_optimizer: torch.optim.Optimizer | None  # SGD on the centers, only when beta > 0
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stage: StageConfig
    total_steps: int
    env: DistEnv
    amp: bool = False
    after_step: AfterStep | None = None
    dropout: ModalityDropout | None = None  # missing-modality training: a presence mask per batch
    seed: int = 0  # the random-triplet draws of step s come from triplet_generator(seed, s)
    stage_step: int = 0  # optimizer steps done in this stage
    epoch_stats: EpochStats | None = None  # the running sums of the current epoch (kept across a mid-epoch resume)


@dataclass
class StepInfo:
    """What a step callback sees: position and the step's loss."""

    stage_step: int  # steps done in the stage, after this one
    batch: int  # batches done in the epoch, after this one
    loss: float
    samples_per_s: float
    lr: float


@dataclass
class EpochStats:
    """Summed losses and counts of one epoch (this rank until `reduced`)."""

    steps: int = 0
    samples: int = 0
    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "triplet": 0.0, "center": 0.0, "ce": 0.0})
    seconds: float = 0.0

    def add(self, parts: LossParts, batch_size: int) -> None:
        """Accumulate one step."""
        self.steps += 1
        self.samples += batch_size
        for key, value in zip(("loss", "triplet", "center", "ce", "distill"), parts):
            if value is not None:
                self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())

    def reduced(self, env: DistEnv) -> dict[str, float]:
        """Mean losses over all ranks' steps and global samples/s (one all_reduce)."""
        keys = list(self.sums)
        totals = all_reduce_sum(env, [self.sums[k] for k in keys] + [self.steps, self.samples])
        steps, samples = max(1.0, totals[-2]), totals[-1]
        out = {k: totals[i] / steps for i, k in enumerate(keys)}
        out["samples_per_s"] = samples / max(self.seconds, 1e-9)
        return out


def freeze_backbone(model: GraFT, frozen: bool) -> None:
    """Backbone trainable or not (the stage recipe); other parameters keep their flags (the BNNeck bias stays frozen)."""
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)


def set_train_mode(model: GraFT, stage: StageConfig) -> None:
    """train() for the trained parts; a frozen backbone stays in eval mode (no dropout/drop-path)."""
    model.train()
    if stage.freeze_backbone:
        model.backbone.eval()


def needs_unused_search(model: GraFT) -> bool:
    """DDP's find_unused_parameters: only when a trainable backbone head (`attn_pool`, ...) gets no gradient."""
    return any(p.requires_grad for m in unused_modules(model.backbone) for p in m.parameters())


def make_stage(model: GraFT, stage: StageConfig, total_steps: int, env: DistEnv, amp: bool = False,
               after_step: AfterStep | None = None, global_batches_per_step: int = 1,
               distiller: Distiller | None = None, dropout: ModalityDropout | None = None, seed: int = 0) -> StageRun:
    """Freeze per the stage, build criterion, AdamW (+ SGD for learned centers), schedule and the (DDP) objective.

    `distiller`: a frozen teacher whose distillation terms join the loss (the prune–finetune loop, or training
    with train.teacher_file). `dropout`: the presence masks of missing-modality training. `seed`: where the
    stage's random triplets come from (triplet_generator(seed, step)).
    """
    freeze_backbone(model, stage.freeze_backbone)
    sync_batchnorm(model, env)
    num_ids = model.head.classifier.out_features
    criterion = GraftLoss(stage.loss, num_ids, model.embed_dim).to(env.device)
    use_centers = stage.loss.beta > 0 and stage.loss.centers == "learned"
    criterion.center.centers.requires_grad_(use_centers)  # unused params would stall DDP
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay, betas=tuple(stage.betas))
    center_opt = torch.optim.SGD(criterion.parameters(), lr=stage.center_lr) if use_centers else None
    objective: nn.Module = Objective(model, criterion, distiller, env)
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(env.device).index] if env.device.startswith("cuda") else None
        # broadcasts rank 0's weights now; the per-step search for unused parameters only when there are some
        objective = DDP(objective, device_ids=ids, find_unused_parameters=needs_unused_search(model))
    scheduler = build_scheduler(optimizer, stage, total_steps, global_batches_per_step)
    return StageRun(model, criterion, objective, optimizer, center_opt, scheduler, stage, total_steps, env,
                    amp and env.device.startswith("cuda"), after_step, dropout=dropout, seed=seed)


def _autocast(run: StageRun) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs when amp is on; nothing on CPU."""
    if run.amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(run: StageRun, images: Mapping[str, torch.Tensor], labels: torch.Tensor,
               present: torch.Tensor | None = None) -> LossParts:
    """zero_grad -> forward -> backward -> AdamW (+ center SGD) -> lr schedule -> after_step hook.

    `present`: (B, M) presence mask of the batch (missing-modality training), None: every modality.
    """
    dev = torch.device(run.env.device)
    modalities = run.model.modalities
    inputs = {m: x.to(dev, non_blocking=True) for m, x in images.items() if m in modalities}  # (B, 3, H, W)
    labels = labels.to(dev, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    if run.center_optimizer is not None:
        run.center_optimizer.zero_grad(set_to_none=True)
    if present is not None:
        present = present.to(dev, non_blocking=True)
    generator = triplet_generator(run.seed, run.stage_step) if run.stage.loss.mining == "random" else None
    with _autocast(run):
        parts = run.objective(inputs, labels, present, generator)
    parts.total.backward()
    run.optimizer.step()
    if run.center_optimizer is not None:
        centers = run.criterion.center.centers
        if centers.grad is not None:
            centers.grad.mul_(1.0 / run.stage.loss.beta)  # center update independent of beta (Wen et al.)
        run.center_optimizer.step()
    run.scheduler.step()
    run.stage_step += 1
    if run.after_step is not None:
        run.after_step(run.model)
    return parts


def run_epoch(run: StageRun, loader: Iterable, start_batch: int = 0, on_step: OnStep | None = None) -> EpochStats:
    """Train over the loader (already positioned by the sampler) until it ends or the stage's steps are spent."""
    resumed = start_batch > 0 and run.epoch_stats is not None
    stats = run.epoch_stats if resumed else EpochStats()
    run.epoch_stats = stats
    start = time.perf_counter() - stats.seconds
    batch = start_batch
    for images, labels, _ in loader:
        if run.stage_step >= run.total_steps:
            break
        t0 = time.perf_counter()
        present = run.dropout.mask(batch, len(labels)) if run.dropout is not None else None
        parts = train_step(run, images, labels, present)
        stats.add(parts, len(labels))
        batch += 1
        loss, lr = float(parts.total.detach()), run.optimizer.param_groups[0]["lr"]
        check_loss(loss, run.stage_step, lr)
        if on_step is not None:
            sps = len(labels) * run.env.world_size / max(time.perf_counter() - t0, 1e-9)
            on_step(StepInfo(run.stage_step, batch, loss, sps, lr))
        if run.stage_step >= run.total_steps:
            break
    check_weights(run.model, run.stage_step)  # before anything of this epoch is evaluated or saved
    stats.seconds = time.perf_counter() - start
    return stats


def stage_state(run: StageRun) -> dict[str, Any]:
    """Optimiser, center optimiser, scheduler and criterion states (weights_only-loadable)."""
    state: dict[str, Any] = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                             "criterion": {k: v.detach().cpu() for k, v in run.criterion.state_dict().items()},
                             "stage_step": run.stage_step}
    if run.center_optimizer is not None:
        state["center_optimizer"] = run.center_optimizer.state_dict()
    if run.epoch_stats is not None:
        state["epoch_stats"] = asdict(run.epoch_stats)
    return state


def load_stage_state(run: StageRun, state: Mapping[str, Any]) -> None:
    """Restore what `stage_state` captured."""
    run.criterion.load_state_dict(state["criterion"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.center_optimizer is not None and "center_optimizer" in state:
        run.center_optimizer.load_state_dict(state["center_optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.stage_step = int(state["stage_step"])
    if "epoch_stats" in state:
        run.epoch_stats = EpochStats(**state["epoch_stats"])
