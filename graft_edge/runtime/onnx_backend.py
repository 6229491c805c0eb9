"""ONNX files (FP32, FP16, INT8) exported by `graft-edge export` as an Embedder, on ONNX Runtime.

The EmbedderInfo comes from the file's own metadata_props (written at export), or from its JSON
sidecar when the props are missing; a foreign ONNX without either is refused (its preprocessing
would be a guess). Session: full graph optimisation, intra-op threads = `threads` (default: ORT's
choice, one per physical core), sequential execution (the fastest for one small-batch model).
`--device cuda[:N]` runs on the CUDA execution provider (onnxruntime-gpu, the `gpu` extra); FP16 graphs keep
the FP32 LayerNorm/Softmax they were exported with.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from graft_edge.artefact.embedder import EmbedderInfo, embedder_info
from graft_edge.artefact.onnx_file import data_file
from graft_edge.artefact.record import decode_props
from graft_edge.errors import GraftError, one_line
from graft_edge.runtime import artefact_size, read_metadata
from graft_edge.runtime.presence import check_graph_inputs, presence_feeds


def session_options(threads: int | None = None):
    """ORT options for latency: ORT_ENABLE_ALL, sequential, `threads` intra-op threads when given."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only
    if threads:
        if threads < 1:
            raise GraftError(f"--threads {threads}: expected a positive integer")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts


def cuda_index(device: str) -> int:
    """'cuda' -> 0, 'cuda:1' -> 1 (GraftError naming the option otherwise)."""
    _, _, idx = device.partition(":")
    if not idx:
        return 0
    if not idx.isdigit():
        raise GraftError(f"--device {device!r}: expected cuda or cuda:N")
    return int(idx)


def providers_for(device: str) -> list:
    """Execution providers for 'cpu' or 'cuda[:N]' (GraftError when CUDA is asked for but absent).

    With onnxruntime-gpu the CUDA/cuDNN libraries are preloaded from PyTorch or the nvidia-* wheels first
    (`onnxruntime.preload_dlls`), so the `gpu` extra needs no system CUDA install.
    """
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = cuda_index(device)
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GraftError(f"--device {device}: this onnxruntime ({ort.__version__}) has no CUDA provider: "
                             "pip install 'graft-edge[gpu]' (onnxruntime-gpu in place of onnxruntime)")
        preload = getattr(ort, "preload_dlls", None)
        if callable(preload):
            try:
                preload()
            except Exception:  # the libraries may already be on the loader path; the session says if not
                pass
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise GraftError(f"--device {device!r}: expected cpu or cuda")


def check_provider(session, device: str, path: Path) -> None:
    """ORT silently falls back to the CPU when its CUDA provider cannot start: refuse that for --device cuda."""
    if device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
        raise GraftError(f"--device {device}: ONNX Runtime could not start its CUDA provider for {path.name} "
                         "(no usable NVIDIA GPU, or the CUDA 12/13 and cuDNN 9 libraries onnxruntime-gpu needs are "
                         "missing)")


def onnx_info(path: str | Path, session=None) -> EmbedderInfo:
    """EmbedderInfo of an exported ONNX: metadata_props first, the JSON sidecar as fallback."""
    path = Path(path)
    meta = decode_props(session.get_modelmeta().custom_metadata_map) if session is not None else {}
    if not meta.get("format"):
        meta = read_metadata(path)
    extra = {"file_size": artefact_size(path)}
    return embedder_info(meta, path, "onnx", extra)


class OnnxEmbedder:
    """Runs an exported ONNX in ONNX Runtime: {modality: (B, 3, H, W)} -> (B, D) float32."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise GraftError(f"model {self.path} does not exist")
        providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads), providers=providers)
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph / NoSuchFile types
            msg = one_line(exc)
            hint = ""
            if not data_file(self.path).exists() and ("external" in msg.lower() or ".data" in msg):
                hint = f" (its weights file {data_file(self.path).name} must sit beside it)"
            raise GraftError(f"ONNX Runtime cannot load {self.path}: {msg}{hint}") from None
        check_provider(self.session, device, self.path)
        info = onnx_info(self.path, self.session)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.presence_input = check_graph_inputs(self.input_names, info, self.path)
        self.device = device
        self.info = replace(info, extra={**info.extra, "providers": self.session.get_providers(),
                                         "threads": threads or "onnxruntime default (one per physical core)"})

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: float32 (B, 3, H, W) normalised} -> float32 (B, D).

        With a presence-mask input any non-empty subset of modalities will do (plus an optional per-sample
        `present` (B, M) mask); without one every modality is required.
        """
        feeds = presence_feeds(batch, self.info.modalities, self.info.img_size, self.presence_input, self.path.name)
        out = self.session.run([self.output_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def bind(self, batch: dict[str, np.ndarray]) -> Callable[[], Any]:
        """IO binding: copy `batch` to the session's device once; the returned call runs the model on it and
        returns the output as an OrtValue left on that device (timing measures the device, not host copies)."""
        import onnxruntime as ort

        feeds = presence_feeds(batch, self.info.modalities, self.info.img_size, self.presence_input, self.path.name)
        where, index = ("cuda", cuda_index(self.device)) if self.device.startswith("cuda") else ("cpu", 0)
        io = self.session.io_binding()
        for name, arr in feeds.items():
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), where, index))
        io.bind_output(self.output_name, where, index)

        def run() -> Any:
            self.session.run_with_iobinding(io)
            return io.get_outputs()[0]

        return run

    def synchronize(self) -> None:
        """ORT runs synchronously: nothing to wait for (the timing API calls it on every backend)."""
