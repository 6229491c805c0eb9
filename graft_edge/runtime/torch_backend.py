"""PyTorch checkpoints as an Embedder (eager, CPU or CUDA; FP32 or bf16 autocast)."""
from __future__ import annotations

from pathlib import Path

import torch

from graft_edge.checkpoint import load_model
from graft_edge.errors import GraftError
from graft_edge.model.embedder import ModelEmbedder


class TorchEmbedder(ModelEmbedder):
    """A checkpoint file loaded and run with `GraFT.embed` under inference mode."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, dtype: str = "fp32") -> None:
        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GraftError(f"--device {device}: no CUDA GPU is available to PyTorch here")
        model, checkpoint = load_model(path)
        super().__init__(model.to(torch.device(device)), str(path), checkpoint, dtype=dtype)
