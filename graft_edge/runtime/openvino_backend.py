"""OpenVINO IR artefacts (FP32, bf16, NNCF INT8) exported by `graft-edge export --openvino` as an Embedder.

The IR's metadata is its JSON sidecar (`model.openvino.xml` -> `model.openvino.json`). The precision
there decides the compile hint: `bf16` -> INFERENCE_PRECISION_HINT bf16 (refused on CPUs without
AVX512-BF16 / AMX, where it would be emulated), everything else f32 — set explicitly, because
OpenVINO's CPU default is bf16 on AMX machines. Latency hint, `threads` inference threads.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from graft_edge.artefact.embedder import embedder_info
from graft_edge.artefact.record import read_sidecar
from graft_edge.cpu import require_bf16
from graft_edge.errors import GraftError, one_line
from graft_edge.runtime import artefact_size
from graft_edge.runtime.presence import check_graph_inputs, presence_feeds


def precision_hint(precision: str) -> str:
    """The INFERENCE_PRECISION_HINT an artefact of this metadata precision is compiled with."""
    return "bf16" if precision == "bf16" else "f32"


def compile_ir(path: str | Path, precision: str, threads: int | None = None, device: str = "cpu",
               profile: bool = False) -> Any:
    """An OpenVINO CompiledModel of the IR at `path` with the hint of `precision` (and its performance counters on
    with `profile`); GraftError in one line."""
    if not device.startswith("cpu"):
        raise GraftError(f"--device {device}: OpenVINO artefacts run on the CPU here (use --device cpu)")
    if threads is not None and threads < 1:
        raise GraftError(f"--threads {threads}: expected a positive integer")
    hint = precision_hint(precision)
    if hint == "bf16":
        require_bf16(f"{Path(path).name} (bf16)")
    try:
        import openvino as ov
    except ImportError:
        raise GraftError(f"{path}: OpenVINO artefacts need the openvino package (pip install openvino)") from None
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if profile:
        config["PERF_COUNT"] = True
    try:
        core = ov.Core()
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as exc:
        bin_file = Path(path).with_suffix(".bin")
        hint_text = f" (its weights file {bin_file.name} must sit beside it)" if not bin_file.exists() else ""
        raise GraftError(f"OpenVINO cannot load {path}: {one_line(exc)}{hint_text}") from None


class OpenVINOEmbedder:
    """Runs an exported OpenVINO IR: {modality: (B, 3, H, W)} -> (B, D) float32."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise GraftError(f"model {self.path} does not exist")
        meta = read_sidecar(self.path)
        if meta is None:
            raise GraftError(f"{self.path}: no metadata sidecar {self.path.with_suffix('.json').name} beside it "
                             "(export it with `graft-edge export --openvino`)")
        info = embedder_info(meta, self.path, "openvino", {"file_size": artefact_size(self.path)})
        precision = str(info.extra.get("precision"))
        self.compiled = compile_ir(self.path, precision, threads, device)
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.presence_input = check_graph_inputs(self.input_names, info, self.path)
        self.request = self.compiled.create_infer_request()
        self.device = "cpu"
        self.info = replace(info, extra={**info.extra, "inference_precision_hint": precision_hint(precision),
                                         "threads": threads or "openvino default (one stream, all cores)"})

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: float32 (B, 3, H, W) normalised} -> float32 (B, D).

        With a presence-mask input any non-empty subset of modalities will do (plus an optional per-sample
        `present` (B, M) mask); without one every modality is required.
        """
        feeds = presence_feeds(batch, self.info.modalities, self.info.img_size, self.presence_input, self.path.name)
        return np.array(self.request.infer(feeds)[0], dtype=np.float32)

    def synchronize(self) -> None:
        """Synchronous inference: nothing to wait for."""
