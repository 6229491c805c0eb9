"""Export for deployment: ONNX (FP32, INT8 dynamic / static QDQ, FP16) and TensorRT engines, each checked and self-describing.

    from graft_edge.export import ExportOptions, export_model
    result = export_model("run/best.pt", "deploy/", ExportOptions(int8=("dynamic", "static"), calib_data="data/"))
    result.get("onnx-fp32").parity["max_abs_diff"]

Building blocks: export_onnx, quantize_dynamic_int8, quantize_static_int8, convert_fp16, build_engine.
Heavy imports (torch.onnx, onnxruntime, tensorrt) happen inside the functions.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "ExportOptions", "ExportResult", "Artefact", "ExportFailed", "export_model",
    "export_onnx", "quantize_dynamic_int8", "quantize_static_int8", "convert_fp16", "build_engine",
    "BatchRange", "parse_batch_range", "trt_plan", "TensorRTUnavailable", "sidecar_path",
]

_WHERE = {
    "ExportOptions": "pipeline", "ExportResult": "pipeline", "Artefact": "pipeline", "ExportFailed": "pipeline",
    "export_model": "pipeline", "export_onnx": "onnx", "quantize_dynamic_int8": "quantize",
    "quantize_static_int8": "quantize", "convert_fp16": "fp16", "build_engine": "tensorrt",
    "BatchRange": "tensorrt", "parse_batch_range": "tensorrt", "trt_plan": "tensorrt",
    "TensorRTUnavailable": "tensorrt", "sidecar_path": "metadata",
}


def __getattr__(name: str) -> Any:
    """Lazy attribute access: `graft_edge.export.export_model` imports its module on first use."""
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"graft_edge.export.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'graft_edge.export' has no attribute {name!r}")
