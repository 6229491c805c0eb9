"""The Embedder protocol, its metadata, and format dispatch by file suffix."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from graft_edge.errors import GraftError


@dataclass(frozen=True)
class EmbedderInfo:
    """Everything a runtime needs to preprocess and describe a model."""

    format: str  # torch | onnx | tensorrt
    path: str
    modalities: tuple[str, ...]
    img_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    params_embedding: int
    params_nonzero: int
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (precision, history, ...)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = asdict(self)
        d["modalities"], d["img_size"] = list(self.modalities), list(self.img_size)
        return d


class Embedder(Protocol):
    """Maps a batch of per-modality images to L2-normalised embeddings."""

    info: EmbedderInfo

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: float32 (B, 3, H, W) normalised} -> float32 (B, D)."""
        ...


TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
ONNX_SUFFIXES = (".onnx",)
TRT_SUFFIXES = (".engine", ".plan", ".trt")


def model_format(path: str | Path) -> str:
    """'torch' | 'onnx' | 'tensorrt' from the file suffix; GraftError lists accepted suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in TRT_SUFFIXES:
        return "tensorrt"
    accepted = ", ".join(TORCH_SUFFIXES + ONNX_SUFFIXES + TRT_SUFFIXES)
    raise GraftError(f"cannot tell the format of {path}: expected a file ending in one of {accepted}")


def load_embedder(path: str | Path, device: str = "cpu", threads: int | None = None) -> Embedder:
    """Open a checkpoint, ONNX file or TensorRT engine as an Embedder."""
    path = Path(path)
    fmt = model_format(path)
    if not path.is_file():
        raise GraftError(f"model {path} does not exist")
    if fmt == "torch":
        from graft_edge.runtime.torch_backend import TorchEmbedder

        return TorchEmbedder(path, device=device, threads=threads)
    if fmt == "onnx":
        from graft_edge.runtime.onnx_backend import OnnxEmbedder

        return OnnxEmbedder(path, device=device, threads=threads)
    from graft_edge.runtime.tensorrt_backend import TensorRTEmbedder

    return TensorRTEmbedder(path, device=device)
