"""Safe checkpoints: config + weights (+ pruned architecture + history), loaded with weights_only=True.

A checkpoint is a plain dict of tensors, numbers and strings, never pickled module objects, so
`torch.load(path, weights_only=True)` reads it and a malicious pickle payload is refused.
"""
from __future__ import annotations

import pickle
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from graft_edge import __version__
from graft_edge.config import GraftConfig, config_from_dict, config_to_dict
from graft_edge.errors import GraftError, one_line
from graft_edge.fileio import atomic_write
from graft_edge.model import build_model
from graft_edge.model.arch import apply_arch

FORMAT = "graft-edge-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: resolved config, weights, and optional pruning/training state."""

    config: GraftConfig
    state_dict: dict[str, torch.Tensor]
    arch: dict[str, Any] | None = None  # pruned per-layer widths (None for a dense model)
    history: list[dict[str, Any]] = field(default_factory=list)  # pruning steps
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. training state for --resume


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    config: GraftConfig,
    arch: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint (temp file + rename)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": arch,
        "history": list(history or []),
        "meta": {"graft_edge": __version__, "torch": str(torch.__version__), "saved_at": time.time(), **(meta or {})},
        "extra": extra or {},
    }
    return atomic_write(path, lambda tmp: _save(payload, tmp, Path(path)))


def _save(payload: dict[str, Any], tmp: Path, path: Path) -> None:
    """torch.save, with its writer's RuntimeError (e.g. on a full disk) as one line naming the checkpoint."""
    try:
        torch.save(payload, tmp)
    except RuntimeError as exc:
        free = shutil.disk_usage(path.parent).free
        hint = f"only {free / 1e6:.1f} MB free on its disk" if free < (64 << 20) else str(exc).splitlines()[0][:200]
        raise GraftError(f"cannot write {path}: the write failed ({hint})") from None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint; every failure is one GraftError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise GraftError(f"checkpoint {path} is corrupt or truncated (not a complete PyTorch archive)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise GraftError(f"checkpoint {path} contains a pickled object that is not plain weights; "
                             "refusing to load it") from None
        raise GraftError(f"checkpoint {path} is corrupt or truncated ({one_line(exc, 120)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise GraftError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__})") from None
    except Exception as exc:  # torch raises a variety of types on hostile payloads
        raise GraftError(f"checkpoint {path} cannot be read safely ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GraftError(f"{path} is not a graft-edge checkpoint (expected a file written by graft-edge init/train/prune)")
    if data.get("version") != VERSION:
        raise GraftError(f"checkpoint {path} has format version {data.get('version')!r}; this graft-edge reads version {VERSION}")
    try:
        config = config_from_dict(data["config"])
    except GraftError as exc:
        raise GraftError(f"checkpoint {path} has an invalid config: {exc}") from None
    return Checkpoint(
        config=config, state_dict=data["state_dict"], arch=data.get("arch"),
        history=list(data.get("history") or []), meta=dict(data.get("meta") or {}), extra=dict(data.get("extra") or {}),
    )


def model_from_checkpoint(ckpt: Checkpoint, path: str | Path = "checkpoint") -> torch.nn.Module:
    """Rebuild the (possibly pruned) model of a checkpoint and load its weights."""
    model = build_model(ckpt.config.model, pretrained=False)
    if ckpt.arch:
        apply_arch(model, ckpt.arch)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise GraftError(f"checkpoint {path}: weights do not match its architecture ({one_line(exc, 160)})") from None
    return model.eval()


def load_model(path: str | Path) -> tuple[torch.nn.Module, Checkpoint]:
    """Read a checkpoint and rebuild its model in eval mode."""
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, path), ckpt
