"""One Embedder interface over every deployable format (PyTorch, ONNX Runtime, TensorRT).

eval, bench and frontier all go through `load_embedder`, so accuracy and speed are measured on
exactly what ships.
"""
from graft_edge.runtime.base import Embedder, EmbedderInfo, load_embedder

__all__ = ["Embedder", "EmbedderInfo", "load_embedder"]
