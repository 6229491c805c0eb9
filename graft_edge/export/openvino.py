"""OpenVINO IR artefacts (.xml graph + .bin weights) from the checked FP32 ONNX: FP32, bf16, and INT8 by NNCF.

The IR is converted from the same FP32 ONNX every other format starts from (`ov.convert_model`), so
its graph inputs are the modalities and its output is `embedding`. INT8 is NNCF post-training
quantisation with its transformer settings (`model_type=TRANSFORMER`: MatMuls, including attention's
products, with SmoothQuant and fast bias correction) and the `performance` preset (symmetric INT8 weights and
activations: on the trained synthetic model it kept mAP within 0.2 points of FP32 where NNCF's default
`mixed` preset for transformers, asymmetric activations, lost 2.9), calibrated on the train split of
--calib-data. Metadata goes in the `<stem>.json` sidecar the exporter writes for every artefact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from graft_edge.errors import GraftError, one_line

NNCF_MAX_SUBSET = 300  # nncf.quantize's own default subset size


def require_openvino():
    """The openvino module, or GraftError with the install line."""
    try:
        import openvino as ov
    except ImportError:
        raise GraftError("OpenVINO formats need the openvino package (pip install openvino nncf)") from None
    return ov


def onnx_to_ir(src: Path, dst: Path, compress_to_fp16: bool) -> None:
    """Convert an ONNX file to IR at `dst` (.xml, weights in the .bin beside it)."""
    ov = require_openvino()
    try:
        model = ov.convert_model(str(src))
        ov.save_model(model, str(dst), compress_to_fp16=compress_to_fp16)
    except Exception as exc:
        raise GraftError(f"OpenVINO cannot convert {src.name}: {one_line(exc)}") from None


def calibration_items(calib: Mapping[str, np.ndarray], presence_input: str | None = None) -> list[dict[str, np.ndarray]]:
    """{modality: (N, 3, H, W)} -> N single-image feeds {modality: (1, 3, H, W)} (what nncf.Dataset iterates),
    with an all-present (1, M) mask for a graph that has a presence-mask input."""
    n = len(next(iter(calib.values())))
    items = [{m: np.ascontiguousarray(x[i:i + 1], dtype=np.float32) for m, x in calib.items()} for i in range(n)]
    if presence_input:
        for item in items:
            item[presence_input] = np.ones((1, len(calib)), dtype=np.float32)
    return items


def quantize_int8(src: Path, dst: Path, calib: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """NNCF INT8 of the ONNX `src` (converted to IR first), calibrated on `calib`; the quantisation record."""
    ov = require_openvino()
    try:
        import nncf
    except ImportError:
        raise GraftError("--openvino int8 needs the nncf package (pip install nncf)") from None
    try:
        model = ov.convert_model(str(src))
        extra = [i.get_any_name() for i in model.inputs if i.get_any_name() not in calib]
        items = calibration_items(calib, extra[0] if extra else None)
        subset = min(len(items), NNCF_MAX_SUBSET)
        quantized = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                                  preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=subset)
        ov.save_model(quantized, str(dst), compress_to_fp16=False)
    except GraftError:
        raise
    except Exception as exc:
        raise GraftError(f"NNCF cannot quantise {src.name}: {one_line(exc)}") from None
    fake_quant = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return {"mode": "static", "tool": f"nncf {nncf.__version__}", "model_type": "transformer",
            "preset": "performance", "weights": "int8 symmetric per-channel",
            "activations": "int8 symmetric per-tensor", "smooth_quant": True,
            "calibration_samples": subset, "calibration_split": "train", "fake_quantize_ops": int(fake_quant)}
