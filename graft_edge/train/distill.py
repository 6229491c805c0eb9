"""Knowledge distillation for the prune–finetune loop: a frozen teacher's embedding and logits guide the student.

The student's finetuning loss adds w_e·embedding term + w_l·logits term, where the embedding term compares the
L2-normalised matching features (what ReID ranks with: cosine distance or MSE) and the logits term is
Hinton et al.'s KL(softmax(t/T) ‖ softmax(s/T))·T² (T² keeps its gradient scale independent of T).
The teacher runs in inference mode (eval, no grad) and is held outside the student's module tree, so it never
receives a gradient, never enters an optimiser and is never saved with the student.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from graft_edge.errors import GraftError
from graft_edge.model.graft import GraftOutput
from graft_edge.train.losses import full_precision

EMBED_LOSSES = ("cosine", "mse")
TEACHERS = ("previous", "source")


@dataclass(frozen=True)
class DistillConfig:
    """Weights and temperature of the distillation terms, and which model teaches.

    teacher: "source" (the checkpoint the prune run started from, usually dense, for every step: the default,
        because on the capacity-bound benchmark it recovered more of what finetuning loses at 35% than a pruned
        teacher did; benchmarks/README.md "Size sweep on the capacity-bound set") or "previous" (the model
        before each cut: the source for step 1, then the previous step's result).
    """

    embed_weight: float = 1.0
    logits_weight: float = 1.0
    temperature: float = 4.0
    embed_loss: str = "cosine"  # cosine: mean(1 - cos); mse: mean ‖ŝ - t̂‖² over L2-normalised embeddings
    teacher: str = "source"

    def validated(self) -> DistillConfig:
        """This config, or GraftError naming the first bad option."""
        if self.embed_weight < 0 or self.logits_weight < 0:
            raise GraftError(f"--distill-embed-weight {self.embed_weight} / --distill-logits-weight "
                             f"{self.logits_weight}: expected 0 or more")
        if not self.temperature > 0:
            raise GraftError(f"--distill-temperature {self.temperature}: expected a positive number")
        if self.embed_loss not in EMBED_LOSSES:
            raise GraftError(f"--distill-embed-loss {self.embed_loss!r}: expected one of {', '.join(EMBED_LOSSES)}")
        if self.teacher not in TEACHERS:
            raise GraftError(f"--distill-teacher {self.teacher!r}: expected one of {', '.join(TEACHERS)}")
        return self

    def as_record(self) -> dict[str, Any]:
        """Plain values for checkpoints and run identities."""
        return {"embed_weight": float(self.embed_weight), "logits_weight": float(self.logits_weight),
                "temperature": float(self.temperature), "embed_loss": self.embed_loss, "teacher": self.teacher}


class DistillParts(NamedTuple):
    """The weighted distillation loss and its unweighted terms."""

    total: torch.Tensor
    embed: torch.Tensor
    logits: torch.Tensor


def embedding_distill(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over the batch of 1 − cos(s, t) ("cosine") or ‖s/‖s‖ − t/‖t‖‖² ("mse"); (B, D) each -> scalar."""
    s, t = F.normalize(full_precision(student), dim=-1), F.normalize(full_precision(teacher), dim=-1)
    if kind == "cosine":
        return (1.0 - (s * t).sum(-1)).mean()
    if kind == "mse":
        return (s - t).pow(2).sum(-1).mean()
    raise ValueError(f"unknown embedding distillation {kind!r}: expected one of {EMBED_LOSSES}")


def logits_distill(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) · T², averaged over the batch; (B, C) each -> scalar."""
    T = float(temperature)
    log_p_s = F.log_softmax(full_precision(student) / T, dim=-1)
    log_p_t = F.log_softmax(full_precision(teacher) / T, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def matching_feature(out: GraftOutput, neck_feat: str) -> torch.Tensor:
    """The feature the model ranks with (before or after the BNNeck), un-normalised (B, D)."""
    return out.embedding if neck_feat == "before" else out.neck


def distill_loss(student: GraftOutput, teacher: GraftOutput, cfg: DistillConfig,
                 neck_feat: str = "before") -> DistillParts:
    """w_e·embedding term + w_l·logits term between one batch's student and teacher outputs."""
    emb = embedding_distill(matching_feature(student, neck_feat), matching_feature(teacher, neck_feat).detach(),
                            cfg.embed_loss)
    logit = logits_distill(student.logits, teacher.logits.detach(), cfg.temperature)
    return DistillParts(cfg.embed_weight * emb + cfg.logits_weight * logit, emb.detach(), logit.detach())


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the teacher is a fixed function during finetuning."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_teacher(teacher: Mapping[str, Any], student: Mapping[str, Any], name: str = "the teacher") -> None:
    """GraftError naming the first difference when a teacher cannot distil over the student's identities.

    Each side maps "classifier width", "modalities" and, where known, "data.val_fraction" / "data.val_seed" (which
    training ids the classifier's outputs are: another split puts other identities behind the same outputs).
    """
    for key in ("classifier width", "modalities", "data.val_fraction", "data.val_seed"):
        if key in teacher and key in student and teacher[key] != student[key]:
            t, s = teacher[key], student[key]
            show = (lambda v: ",".join(v)) if key == "modalities" else str
            raise GraftError(f"distillation teacher {name}: its {key} is {show(t)} but the student's is {show(s)}; "
                             "a teacher must be trained on the student's identities and modalities (same data, "
                             "data.val_fraction and data.val_seed)")


def model_identity(model: nn.Module) -> dict[str, Any]:
    """What `check_teacher` compares that a GraFT model itself knows: classifier width and modalities."""
    return {"classifier width": int(model.head.classifier.out_features), "modalities": tuple(model.modalities)}


def config_identity(cfg: Any) -> dict[str, Any]:
    """What `check_teacher` compares from a checkpoint's GraftConfig: width, modalities and identity split."""
    return {"classifier width": int(cfg.model.num_ids), "modalities": tuple(cfg.model.modalities),
            "data.val_fraction": float(cfg.data.val_fraction), "data.val_seed": int(cfg.data.val_seed)}


class Distiller:
    """A frozen teacher plus the distillation config, handed to the training objective.

    A plain object (not an nn.Module), so a module holding it does not register the teacher as a submodule:
    the teacher is absent from state_dict(), parameters() and any DDP wrapper of the student's objective.
    The objective runs the teacher in eval mode without autograd and adds `distill_loss` of the two outputs.
    """

    def __init__(self, teacher: nn.Module, cfg: DistillConfig) -> None:
        self.teacher = freeze_teacher(teacher)
        self.cfg = cfg.validated()
