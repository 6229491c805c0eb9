"""A GraFT model in memory as an Embedder: what training, pruning and the checkpoint runtime evaluate."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from graft_edge.artefact import EmbedderInfo
from graft_edge.model.graft import GraFT, count_params, embedding_params


def torch_info(model: GraFT, path: str, checkpoint: Any = None) -> EmbedderInfo:
    """Metadata of an in-memory model (and of its checkpoint file, when there is one)."""
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


class ModelEmbedder:
    """Runs `GraFT.embed` under inference mode on the model's device; the caller keeps train/eval mode control."""

    def __init__(self, model: GraFT, path: str = "<memory>", checkpoint: Any = None) -> None:
        self.model, self.checkpoint = model, checkpoint
        self.device = next(model.parameters()).device
        self.info = torch_info(model, path, checkpoint)

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: (B, 3, H, W)} -> (B, D) float32."""
        inputs = {m: torch.as_tensor(x).to(self.device, non_blocking=True) for m, x in batch.items()}
        return self.model.embed(inputs).float().cpu().numpy()

    def synchronize(self) -> None:
        """Wait for queued GPU work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
