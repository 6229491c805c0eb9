"""ONNX files (FP32, FP16, INT8) exported by `graft-edge export` as an Embedder, on ONNX Runtime.

The EmbedderInfo comes from the file's own metadata_props (written at export), or from its JSON
sidecar when the props are missing; a foreign ONNX without either is refused (its preprocessing
would be a guess). Session: full graph optimisation, intra-op threads = `threads` (default: ORT's
choice, one per physical core), sequential execution (the fastest for one small-batch model).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from graft_edge.artefact import EmbedderInfo, artefact_size, data_file, decode_props, embedder_info, read_metadata
from graft_edge.errors import GraftError, one_line
from graft_edge.runtime.presence import presence_feeds


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


def providers_for(device: str) -> list[str]:
    """Execution providers for 'cpu' or 'cuda' (GraftError when CUDA is asked for but absent)."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GraftError(f"--device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise GraftError(f"--device {device!r}: expected cpu or cuda")


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
        info = onnx_info(self.path, self.session)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.presence_input = info.extra.get("presence_input")
        missing = [m for m in self.input_names if m not in info.modalities and m != self.presence_input]
        if missing:
            raise GraftError(f"{self.path}: graph input {missing[0]!r} is not one of its metadata's modalities {','.join(info.modalities)}")
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

    def synchronize(self) -> None:
        """ORT runs synchronously: nothing to wait for (the timing API calls it on every backend)."""
