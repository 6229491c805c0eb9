"""Serialized TensorRT engines written by `graft-edge export --trt` as an Embedder.

Named-tensor execution (TensorRT >= 10): `set_input_shape` + `set_tensor_address` for every I/O
tensor, then `execute_async_v3` on a CUDA stream. PyTorch CUDA tensors serve as the device
buffers. The engine's metadata (modalities, preprocessing, precision, ...) comes from its JSON
sidecar `<engine stem>.json`; the batch must lie inside the engine's optimisation profile.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from graft_edge.artefact.embedder import EmbedderInfo, embedder_info
from graft_edge.artefact.record import BatchRange, read_sidecar, sidecar_path
from graft_edge.errors import GraftError, Unavailable, one_line
from graft_edge.runtime.presence import presence_feeds

INSTALL_HINT = "install graft-edge's trt extra (pip install tensorrt) on a machine with an NVIDIA GPU"


class TensorRTUnavailable(Unavailable):
    """TensorRT or an NVIDIA GPU is missing (the ONNX artefacts are unaffected)."""


def nvidia_gpu_available() -> bool:
    """An NVIDIA GPU is visible (through PyTorch CUDA or NVML)."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except Exception:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def require_tensorrt() -> Any:
    """The `tensorrt` module when it and an NVIDIA GPU are present; TensorRTUnavailable saying what is missing."""
    problems = []
    trt = None
    try:
        import tensorrt as trt  # noqa: F811
    except ImportError:
        problems.append("the tensorrt package is not installed")
    except Exception as exc:  # a broken install: CUDA libraries missing, ...
        problems.append(f"the tensorrt package cannot be imported ({one_line(exc, 120)})")
    if not nvidia_gpu_available():
        problems.append("no NVIDIA GPU is available")
    if problems:
        raise TensorRTUnavailable(f"TensorRT engines cannot be built here: {' and '.join(problems)} ({INSTALL_HINT})")
    return trt


def _torch_dtype(trt: Any, dtype: Any):
    """torch dtype of a TensorRT DataType (through numpy)."""
    import torch

    return torch.from_numpy(np.empty(0, dtype=trt.nptype(dtype))).dtype


class TensorRTEmbedder:
    """Runs a TensorRT engine on an NVIDIA GPU: {modality: (B, 3, H, W)} -> (B, D) float32."""

    def __init__(self, path: str | Path, device: str = "cuda") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise GraftError(f"engine {self.path} does not exist")
        meta = read_sidecar(self.path)
        if meta is None:
            raise GraftError(f"engine {self.path} has no metadata sidecar {sidecar_path(self.path).name} "
                             "(engines written by `graft-edge export --trt` have one)")
        trt = require_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise GraftError("TensorRTEmbedder uses PyTorch CUDA tensors as buffers, but this PyTorch has no CUDA")
        if device == "cpu":
            device = "cuda"  # an engine only runs on the GPU; `eval --device cpu` (the default) means "default device"
        if not device.startswith("cuda"):
            raise GraftError(f"--device {device!r}: TensorRT engines run on cuda devices")
        self.trt = trt
        self.device = torch.device(device)
        torch.cuda.set_device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise GraftError(
                f"TensorRT {trt.__version__} cannot load {self.path.name}: engines only run on the TensorRT version and "
                f"GPU model they were built with (built with TensorRT {meta.get('tensorrt_version', '?')}); rebuild it here"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.output_name = meta.get("output_name", "embedding")
        if self.output_name not in self.output_names:
            self.output_name = self.output_names[0]
        lo, opt, hi = self.engine.get_tensor_profile_shape(self.input_names[0], 0)
        self.batch_range = BatchRange(int(lo[0]), int(opt[0]), int(hi[0]))
        self.stream = torch.cuda.Stream(self.device)
        info = embedder_info(meta, self.path, "tensorrt", {"file_size": self.path.stat().st_size,
                                                         "batch_profile": [self.batch_range.min, self.batch_range.opt,
                                                                           self.batch_range.max]})
        self.info: EmbedderInfo = info

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: float32 (B, 3, H, W)} -> float32 (B, D); B must be inside the engine's batch profile."""
        import torch

        feeds = presence_feeds(batch, self.info.modalities, self.info.img_size, self.info.extra.get("presence_input"),
                               self.path.name)
        B = int(next(iter(feeds.values())).shape[0])
        if not self.batch_range.contains(B):
            raise GraftError(
                f"batch of {B} is outside {self.path.name}'s optimisation profile {self.batch_range.min}..{self.batch_range.max} "
                f"(use --batch-size within it, or re-export with --batch MIN:OPT:MAX covering {B})"
            )
        keep = []
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                x = feeds[name]
                dtype = _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
                t = torch.from_numpy(x).to(self.device, non_blocking=False).to(dtype).contiguous()
                keep.append(t)
                self.context.set_input_shape(name, tuple(t.shape))
                self.context.set_tensor_address(name, t.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = _torch_dtype(self.trt, self.engine.get_tensor_dtype(name))
                outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise GraftError(f"TensorRT failed to run {self.path.name} (see TensorRT's messages)")
        self.stream.synchronize()
        return outputs[self.output_name].float().cpu().numpy()

    def synchronize(self) -> None:
        """Wait for queued GPU work (for timing)."""
        self.stream.synchronize()
