"""The distillation teacher of a training run (train.teacher_file): a trained model of the same sensors and ids.

With modality dropout it is the standard way to pass full-sensor knowledge to partial views: the teacher sees
every sensor of each sample, the student only the ones its presence mask kept (train/loop.py `Objective`).
"""
from __future__ import annotations

from pathlib import Path

from graft_edge.checkpoint import load_model
from graft_edge.config import GraftConfig
from graft_edge.errors import GraftError
from graft_edge.train.distill import DistillConfig, Distiller


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
    if tuple(teacher.modalities) != tuple(cfg.model.modalities):
        raise GraftError(f"train.teacher_file={path} takes {','.join(teacher.modalities)} but the model is built for "
                         f"{','.join(cfg.model.modalities)}: the teacher must see the student's sensors")
    width = teacher.head.classifier.out_features
    if width != cfg.model.num_ids:
        raise GraftError(f"train.teacher_file={path} classifies {width} ids but this run trains on "
                         f"{cfg.model.num_ids}: distil from a model trained on the same training ids")
    mine, its = cfg.data, ckpt.config.data
    if (its.val_fraction, its.val_seed) != (mine.val_fraction, mine.val_seed):
        raise GraftError(f"train.teacher_file={path} held out data.val_fraction={its.val_fraction}, "
                         f"data.val_seed={its.val_seed} but this run holds out {mine.val_fraction}, {mine.val_seed}: "
                         "its classes are other identities")
    return Distiller(teacher.to(device), DistillConfig())
