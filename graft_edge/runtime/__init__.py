"""One Embedder interface over every deployable format (PyTorch, ONNX Runtime, OpenVINO, TensorRT).

eval, bench, frontier, serve and the exporter's own checks all go through `load_embedder`, so accuracy
and speed are measured on exactly what ships. `RUNTIMES` describes each runtime family (suffixes,
companion files, embedded metadata, opener); see `graft_edge.runtime.registry`.
"""
from graft_edge.artefact.embedder import Embedder, EmbedderInfo
from graft_edge.errors import Unavailable
from graft_edge.runtime.registry import (
    RUNTIMES,
    RuntimeFamily,
    artefact_files,
    artefact_size,
    check_available,
    family_of,
    load_embedder,
    read_metadata,
    register,
    runtime_of,
    unavailable,
)
from graft_edge.runtime.tensorrt_backend import TensorRTUnavailable, nvidia_gpu_available, require_tensorrt

__all__ = ["RUNTIMES", "Unavailable", "Embedder", "EmbedderInfo", "RuntimeFamily", "TensorRTUnavailable", "artefact_files",
           "artefact_size", "check_available", "family_of", "load_embedder", "nvidia_gpu_available", "read_metadata", "register",
           "require_tensorrt", "runtime_of", "unavailable"]
