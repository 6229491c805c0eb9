"""One builder per format of graft_edge.formats: how each artefact file is made from its source.

An ONNX builder writes the staged file and returns the metadata it adds; the exporter then checks the
file against PyTorch and commits or quarantines it. TensorRT engines are built by `build_trt` from the
ONNX variant the TensorRT version needs (see tensorrt.trt_plan). OpenVINO IRs are built from the checked FP32
ONNX too (graft_edge.export.openvino) and checked through OpenVINO.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from graft_edge.artefact import PRESENCE_INPUT
from graft_edge.cpu import require_bf16
from graft_edge.export.fp16 import FP32_OPS, convert_fp16
from graft_edge.export.fusion import export_fused, fused_op_counts
from graft_edge.export.onnx import check_exported, export_onnx, graph_inputs
from graft_edge.export.openvino import onnx_to_ir, quantize_int8
from graft_edge.export.options import ExportOptions
from graft_edge.export.quantize import quantize_dynamic_int8, quantize_static_int8


@dataclass(frozen=True)
class BuildInputs:
    """What builders read: the model, the options, the calibration images (None without --calib-data)."""

    model: torch.nn.Module
    options: ExportOptions
    calib: Mapping[str, np.ndarray] | None


def build_fp32(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """FP32 ONNX straight from the model (the source of every other format)."""
    export_onnx(job.model, dst, opset=job.options.opset, external_data=job.options.external_data)
    check_exported(dst, graph_inputs(job.model), job.options.opset)
    return {"tolerance": job.options.tolerance}


def build_fused(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """FP32 ONNX straight from the model with every self-attention one ONNX Runtime contrib node."""
    record = export_fused(job.model, dst, opset=job.options.opset, external_data=job.options.external_data,
                          op=job.options.attention_op)
    check_exported(dst, graph_inputs(job.model), job.options.opset)
    return {"tolerance": job.options.tolerance, "fusion": record}


def _fusion_of(path: Path) -> dict[str, Any]:
    """The fused-op counts of a quantised graph (empty for an unfused one)."""
    counts = fused_op_counts(path)
    fused = {k: counts[k] for k in ("Attention", "MultiHeadAttention", "QAttention") if counts.get(k)}
    return {"fusion": {"fused_ops": fused}} if fused else {}


def build_int8_dynamic(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """ONNX Runtime dynamic INT8 of the FP32 ONNX (fused or not; fused Attention nodes become QAttention)."""
    quantize_dynamic_int8(src, dst, attention=True)
    return {"quantization": {"mode": "dynamic", "weights": "int8 symmetric per-channel",
                             "activations": "uint8 per-batch at run time",
                             "ops": "MatMul with constant weights, fused Attention (QAttention)"}, **_fusion_of(dst)}


def build_int8_static(job: BuildInputs, src: Path | None, dst: Path, activations: str = "s8") -> dict[str, Any]:
    """Static INT8 Q/DQ of the FP32 ONNX, calibrated on the train split of --calib-data (S8S8 or U8S8)."""
    calib = dict(job.calib)
    if PRESENCE_INPUT in graph_inputs(job.model):  # calibrated with every sensor present
        n = len(next(iter(calib.values())))
        calib[PRESENCE_INPUT] = np.ones((n, len(job.model.modalities)), dtype=np.float32)
    quantize_static_int8(src, dst, calib, method=job.options.calib_method, activations=activations)
    return {**_fusion_of(dst), "quantization": {
        "mode": "static", "format": "QDQ", "weights": "int8 symmetric per-channel",
        "activations": "int8 symmetric per-tensor" if activations == "s8" else "uint8 asymmetric per-tensor",
        "scheme": "S8S8" if activations == "s8" else "U8S8", "calibration": job.options.calib_method,
        "calibration_samples": len(next(iter(job.calib.values()))), "calibration_split": "train",
        "calibration_data": str(job.options.calib_data), "ops": "MatMul/Gemm with constant weights, Conv"}}


def build_int8_u8s8(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """Static INT8 Q/DQ with UINT8 asymmetric activations (ONNX Runtime's CPU U8S8 kernels)."""
    return build_int8_static(job, src, dst, activations="u8")


def build_fp16(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """FP16 copy of the FP32 ONNX with LayerNorm/Softmax/reductions and the output tail kept FP32."""
    convert_fp16(src, dst)
    return {"fp32_ops": list(FP32_OPS) + ["output tail (fusion-token mean, L2 normalisation)"],
            "io_types": "float32"}


# format name (graft_edge.formats) -> builder of its ONNX file; TensorRT rows go through build_trt
ONNX_BUILDERS: dict[str, Callable[[BuildInputs, Path | None, Path], dict[str, Any]]] = {
    "onnx": build_fp32,
    "int8": build_int8_dynamic,
    "int8-static": build_int8_static,
    "int8-u8s8": build_int8_u8s8,
    "onnx-fused": build_fused,
    "int8-fused": build_int8_dynamic,
    "fp16": build_fp16,
}


def build_openvino_fp32(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """OpenVINO IR of the FP32 ONNX, FP32 weights, run with INFERENCE_PRECISION_HINT f32."""
    onnx_to_ir(src, dst, compress_to_fp16=False)
    return {"inference_precision_hint": "f32"}


def build_openvino_bf16(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """OpenVINO IR with FP16-stored weights, run with INFERENCE_PRECISION_HINT bf16 (native bf16 CPUs only)."""
    require_bf16("--openvino bf16")
    onnx_to_ir(src, dst, compress_to_fp16=True)
    return {"inference_precision_hint": "bf16", "weights_stored": "fp16"}


def build_openvino_int8(job: BuildInputs, src: Path | None, dst: Path) -> dict[str, Any]:
    """OpenVINO IR quantised to INT8 by NNCF on the train split of --calib-data."""
    record = quantize_int8(src, dst, job.calib)
    record["calibration_data"] = str(job.options.calib_data)
    return {"inference_precision_hint": "f32", "quantization": record}


# format name (graft_edge.formats) -> builder of its file from the FP32 ONNX; TensorRT rows go through build_trt
BUILDERS: dict[str, Callable[[BuildInputs, Path | None, Path], dict[str, Any]]] = {
    **ONNX_BUILDERS,
    "openvino": build_openvino_fp32,
    "openvino-bf16": build_openvino_bf16,
    "openvino-int8": build_openvino_int8,
}
