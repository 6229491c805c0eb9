"""The distillation teacher of a training run (train.teacher_file): a trained model of the same sensors and ids.

With modality dropout it is the standard way to pass full-sensor knowledge to partial views: the teacher sees
every sensor of each sample, the student only the ones its presence mask kept (train/loop.py `Objective`).
"""
from __future__ import annotations

from pathlib import Path

from graft_edge.checkpoint import load_model
from graft_edge.config import GraftConfig
from graft_edge.errors import GraftError
from graft_edge.train.distill import DistillConfig, Distiller, check_teacher, config_identity, model_identity


def training_teacher(cfg: GraftConfig, device: str = "cpu") -> Distiller | None:
    """The frozen teacher of cfg.train.teacher_file on `device` (DistillConfig's default weights), or None.

    Refused in one line when the file is missing or the teacher takes other modalities, has another classifier
    width or held out other validation ids than the student (its logits would name other identities).
    """
    path = cfg.train.teacher_file
    if not path:
        return None
    if not Path(path).is_file():
        raise GraftError(f"train.teacher_file={path}: no such checkpoint")
    teacher, ckpt = load_model(path)
    student = config_identity(cfg)
    check_teacher({**config_identity(ckpt.config), **model_identity(teacher)}, student, f"train.teacher_file={path}")
    return Distiller(teacher.to(device), DistillConfig())
