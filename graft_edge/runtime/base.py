"""Format dispatch: a file opens as the Embedder of the runtime its suffix names (see graft_edge.formats)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from graft_edge.artefact import Embedder
from graft_edge.errors import GraftError
from graft_edge.formats import runtime_of
from graft_edge.runtime.presence import SubsetEmbedder


def _torch(path: Path, device: str, threads: int | None, dtype: str = "fp32") -> Embedder:
    from graft_edge.runtime.torch_backend import TorchEmbedder

    return TorchEmbedder(path, device=device, threads=threads, dtype=dtype)


def _onnx(path: Path, device: str, threads: int | None) -> Embedder:
    from graft_edge.runtime.onnx_backend import OnnxEmbedder

    return OnnxEmbedder(path, device=device, threads=threads)


def _tensorrt(path: Path, device: str, threads: int | None) -> Embedder:
    from graft_edge.runtime.tensorrt_backend import TensorRTEmbedder

    return TensorRTEmbedder(path, device=device)


def _openvino(path: Path, device: str, threads: int | None) -> Embedder:
    from graft_edge.runtime.openvino_backend import OpenVINOEmbedder

    return OpenVINOEmbedder(path, device=device, threads=threads)


# runtime name (formats.Format.runtime) -> opener; the backends import their optional packages lazily
RUNTIMES = {"torch": _torch, "onnx": _onnx, "tensorrt": _tensorrt, "openvino": _openvino}


def load_embedder(path: str | Path, device: str = "cpu", threads: int | None = None,
                  modalities: str | Sequence[str] | None = None, dtype: str = "fp32") -> Embedder:
    """Open a checkpoint, ONNX file, TensorRT engine or OpenVINO IR as an Embedder (restricted to `modalities` when
    given).

    `dtype` (fp32 | bf16) is the precision a PyTorch checkpoint runs at; an exported artefact runs at the
    precision it was exported in (its metadata says which), whatever `dtype` says.
    """
    path = Path(path)
    runtime = runtime_of(path)
    if not path.is_file():
        raise GraftError(f"model {path} does not exist")
    if threads is not None and threads < 1:
        raise GraftError(f"--threads {threads}: expected a positive integer")
    if runtime == "torch":
        embedder = RUNTIMES[runtime](path, device, threads, dtype)
    else:
        embedder = RUNTIMES[runtime](path, device, threads)
    if modalities is None:
        return embedder
    return SubsetEmbedder(embedder, modalities.split(",") if isinstance(modalities, str) else modalities)
