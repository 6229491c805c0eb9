"""The software versions that shape an artefact or a measurement (recorded in both)."""
from __future__ import annotations

import platform
from importlib import metadata as _md
from typing import Any

from graft_edge import __version__


def software_versions() -> dict[str, Any]:
    """Versions of everything that shapes an artefact or a measurement (None where absent)."""
    def version(*dists: str) -> str | None:
        for dist in dists:
            try:
                return _md.version(dist)
            except _md.PackageNotFoundError:
                continue
        return None

    out: dict[str, Any] = {"python": platform.python_version(), "graft_edge": __version__}
    out["torch"] = version("torch")
    out["onnxruntime"] = version("onnxruntime", "onnxruntime-gpu")
    out["tensorrt"] = version("tensorrt", "tensorrt-cu12", "tensorrt_lean")
    for dist in ("onnx", "onnxscript", "openvino", "nncf", "timm", "numpy", "torch-pruning"):
        out[dist.replace("-", "_")] = version(dist)
    return out

