"""PyTorch models and checkpoints as an Embedder (eager, CPU or CUDA)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from graft_edge.checkpoint import Checkpoint, load_model
from graft_edge.errors import GraftError
from graft_edge.model import GraFT, count_params, embedding_params
from graft_edge.runtime.base import EmbedderInfo


def torch_info(model: GraFT, path: str, checkpoint: Checkpoint | None = None) -> EmbedderInfo:
    """Metadata of an in-memory model (and its checkpoint file, when there is one)."""
    cfg = model.cfg
    extra = {"params_total": count_params(model), "backbone": cfg.backbone, "fusion": cfg.fusion,
             "num_ids": cfg.num_ids, "history": list(checkpoint.history) if checkpoint else [],
             "pruned": bool(checkpoint and checkpoint.arch),
             "preset": checkpoint.config.preset if checkpoint else None}
    if os.path.isfile(path):
        extra["file_size"] = os.path.getsize(path)
    return EmbedderInfo(
        format="torch", path=str(path), modalities=tuple(cfg.modalities), img_size=tuple(cfg.img_size),
        mean=tuple(cfg.mean), std=tuple(cfg.std), embed_dim=model.embed_dim,
        params_embedding=embedding_params(model), params_nonzero=embedding_params(model, nonzero=True),
        extra=extra,
    )


class TorchEmbedder:
    """Runs `GraFT.embed` under inference mode; build from a file or wrap a live model."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 model: GraFT | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GraftError(f"--device {device}: no CUDA GPU is available to PyTorch here")
        checkpoint = None
        if model is None:
            model, checkpoint = load_model(path)
        self.model, self.checkpoint = model, checkpoint
        self.device = torch.device(device)
        self.model.to(self.device)
        self.info = torch_info(self.model, str(path), checkpoint)

    @classmethod
    def from_model(cls, model: GraFT, device: str | None = None) -> "TorchEmbedder":
        """Wrap a model in memory (evaluation during training); the caller keeps train/eval mode control."""
        dev = device or str(next(model.parameters()).device)
        return cls("<memory>", device=dev, model=model)

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: (B, 3, H, W)} -> (B, D) float32."""
        inputs = {m: torch.as_tensor(x).to(self.device, non_blocking=True) for m, x in batch.items()}
        return self.model.embed(inputs).float().cpu().numpy()

    def synchronize(self) -> None:
        """Wait for queued GPU work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
