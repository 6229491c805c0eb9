"""One builder per format of graft_edge.formats: how each artefact file is made from its source.

A builder writes the staged file (and its companions) at `dst` from the checked file of its `source`
format (None for formats built from the model) and returns the facts it adds to the metadata; the
exporter then checks the file through its runtime and commits or quarantines it, the same for every
format. TensorRT engines are built from the ONNX variant the installed TensorRT needs (tensorrt.trt_plan);
a builder that fixes the batch range returns it as `batch_profile`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from graft_edge.artefact.record import PRESENCE_INPUT
from graft_edge.compress import previous_methods
from graft_edge.cpu import require_bf16
from graft_edge.errors import GraftError
from graft_edge.export.fp16 import FP32_OPS, convert_fp16
from graft_edge.export.fusion import export_fused, fused_op_counts
from graft_edge.export.onnx import check_exported, export_onnx, graph_inputs
from graft_edge.export.openvino import onnx_to_ir, quantize_int8
from graft_edge.export.options import ExportOptions
from graft_edge.export.quantize import quantize_dynamic_int8, quantize_static_int8
from graft_edge.export.tensorrt import TIMING_CACHE, build_engine, trt_major, trt_plan
from graft_edge.runtime import require_tensorrt


@dataclass(frozen=True)
class BuildInputs:
    """What builders read: the model, the options, the calibration images (None without --calib-data), the
    checked files built so far ({format name: path}), OUT (for caches) and the checkpoint's pruning history."""

    model: torch.nn.Module
    options: ExportOptions
    calib: Mapping[str, np.ndarray] | None
    built: Mapping[str, Path] = field(default_factory=dict)
    out: Path | None = None
    history: tuple[dict[str, Any], ...] = ()
    log: Callable[[str], None] | None = None


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


def build_trt(job: BuildInputs, src: Path | None, dst: Path, precision: str = "fp32") -> dict[str, Any]:
    """A TensorRT engine from the ONNX variant the installed TensorRT needs for `precision` (builder flags on
    TensorRT 10, the strongly typed FP16 / Q/DQ ONNX on >= 11); SPARSE_WEIGHTS when the history says 2:4."""
    trt = require_tensorrt()
    opt = job.options
    sparse = opt.sparse_weights if opt.sparse_weights is not None else "2:4" in previous_methods(list(job.history))
    plan = trt_plan(trt_major(trt.__version__), precision, sparse)
    source = job.built.get(plan.onnx_variant)
    if source is None:
        raise GraftError(f"TensorRT {trt.__version__} builds {precision} engines from the {plan.onnx_variant} "
                         "format, which was not built")
    cache = job.out / TIMING_CACHE if job.out is not None else None
    return build_engine(source, dst, precision=precision, batch=opt.batch, workspace_mb=opt.workspace_mb,
                        timing_cache=cache, sparse=sparse, log=job.log)


# format name (graft_edge.formats) -> builder of its file; every row of the table but `torch` has one
BUILDERS: dict[str, Callable[[BuildInputs, Path | None, Path], dict[str, Any]]] = {
    "onnx": build_fp32,
    "int8": build_int8_dynamic,
    "int8-static": build_int8_static,
    "int8-u8s8": build_int8_u8s8,
    "onnx-fused": build_fused,
    "int8-fused": build_int8_dynamic,
    "fp16": build_fp16,
    "trt-fp32": partial(build_trt, precision="fp32"),
    "trt-fp16": partial(build_trt, precision="fp16"),
    "trt-int8": partial(build_trt, precision="int8"),
    "openvino": build_openvino_fp32,
    "openvino-bf16": build_openvino_bf16,
    "openvino-int8": build_openvino_int8,
}
