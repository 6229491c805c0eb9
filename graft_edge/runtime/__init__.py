"""One Embedder interface over every deployable format (PyTorch, ONNX Runtime, TensorRT).

eval, bench and frontier all go through `load_embedder`, so accuracy and speed are measured on
exactly what ships.
"""
from graft_edge.artefact import Embedder, EmbedderInfo
from graft_edge.runtime.base import RUNTIMES, load_embedder

__all__ = ["Embedder", "EmbedderInfo", "RUNTIMES", "load_embedder"]
