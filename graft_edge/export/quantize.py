"""ONNX Runtime INT8 quantisation of the FP32 export: dynamic, and static QDQ calibrated on real images.

Choices (measured on GraFT, see benchmarks/README.md "Export"):
- Only MatMul/Gemm with constant weights (and the patch-embedding Conv for static) are quantised:
  the linear layers hold >99% of the FLOPs. Activation x activation MatMuls of attention (Q.K^T,
  P.V), Softmax, LayerNorm, GELU and the final L2 normalisation stay FP32: quantising attention
  probabilities costs accuracy for little speed.
- Weights: signed INT8, symmetric, per output channel, for dynamic and static alike. On the
  random-init rgbnt100 model per-tensor dynamic weights gave a min embedding cosine of 0.983,
  per-channel 0.9997, at the same latency.
- Static activations: signed INT8, symmetric (zero point 0) by default - the only activation scheme
  TensorRT accepts in Q/DQ graphs; `activations="u8"` gives the U8S8 scheme of ONNX Runtime's CPU
  kernels (UINT8 asymmetric activations, the `int8-u8s8` format), a little faster than S8S8 on ORT CPU
  (benchmarks/README.md "Fused transformer graphs and U8S8").
- Fused-attention graphs (fusion.py): dynamic quantisation also turns com.microsoft::Attention into
  QAttention; MultiHeadAttention needs nothing (its q|k|v projection is a plain MatMul before it).
- Calibration: MinMax by default. On the trained synthetic model MinMax, Percentile (99.999) and
  Entropy all stayed within 0.2 mAP points of FP32; on ViT-B x 3 modalities Percentile took 5x
  longer (histograms of ~1000 tensors) for the same cosine. Percentile / entropy are selectable.
  ORT collects one calibration batch at a time (CalibStridedMinMax=1): its histogram
  calibrators otherwise keep every activation of every batch (>20 GB for ViT-B).
- ORT's quant pre-processing (symbolic shape inference + graph optimisation) runs first.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from graft_edge.artefact.onnx_file import EXTERNAL_DATA_THRESHOLD
from graft_edge.errors import GraftError, one_line
from graft_edge.export.calibration import CALIB_METHODS, DEFAULT_CALIB_METHOD
from graft_edge.export.onnx import quiet
from graft_edge.runtime import artefact_size

DEFAULT_PERCENTILE = 99.999
ACTIVATION_TYPES = ("s8", "u8")  # static activations: INT8 symmetric (S8S8, TensorRT) | UINT8 asymmetric (U8S8)
CALIB_BATCH = 4  # samples per calibration run (calibration memory grows with it)


def _large(path: str | Path) -> bool:
    return artefact_size(path) > EXTERNAL_DATA_THRESHOLD


def _fail(what: str, exc: BaseException) -> GraftError:
    return GraftError(f"{what} failed ({one_line(exc)})")


def preprocess(src: str | Path, dst: str | Path) -> Path:
    """ORT quant pre-processing: symbolic shape inference and graph optimisation (falls back to ONNX shapes)."""
    from onnxruntime.quantization import quant_pre_process

    big = _large(src)
    kwargs = dict(save_as_external_data=big, all_tensors_to_one_file=True,
                  external_data_location=Path(dst).name + ".data" if big else None)
    with quiet():
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
        except Exception:  # symbolic shape inference does not know every op: ONNX shape inference only
            try:
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, **kwargs)
            except Exception as exc:
                raise _fail("INT8 pre-processing", exc) from None
    return Path(dst)


def weight_matmuls(path: str | Path, op_types: Sequence[str] = ("MatMul", "Gemm")) -> tuple[list[str], list[str]]:
    """(names of MatMul/Gemm nodes with a constant weight, names of those multiplying two activations)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    # weights may reach the MatMul through a Transpose/Cast of an initializer
    for n in proto.graph.node:
        if n.op_type in ("Transpose", "Cast", "Identity", "Reshape") and n.input and n.input[0] in consts:
            consts.update(n.output)
    weighted, other = [], []
    for n in proto.graph.node:
        if n.op_type in op_types:
            (weighted if len(n.input) > 1 and n.input[1] in consts else other).append(n.name)
    return weighted, other


def quantize_dynamic_int8(src: str | Path, dst: str | Path, per_channel: bool = True,
                          attention: bool = False) -> Path:
    """Dynamic INT8: weights INT8 offline, activations quantised at run time (no calibration data needed).

    Only weight MatMuls are quantised (DynamicQuantizeLinear + MatMulInteger/DynamicQuantizeMatMul), and with
    `attention` also the q|k|v projection inside fused com.microsoft::Attention nodes (-> QAttention).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".prep-") as tmp:
        prepped = preprocess(src, Path(tmp) / "prep.onnx")
        weighted, other = weight_matmuls(prepped)
        try:
            with quiet():
                quantize_dynamic(
                    str(prepped), str(dst), op_types_to_quantize=["MatMul"] + (["Attention"] if attention else []),
                    per_channel=per_channel,
                    reduce_range=False, weight_type=QuantType.QInt8, nodes_to_exclude=other,
                    use_external_data_format=_large(prepped), extra_options={"MatMulConstBOnly": True},
                )
        except Exception as exc:
            raise _fail("INT8 dynamic quantisation", exc) from None
    return dst


class ArrayCalibrationReader(CalibrationDataReader):
    """A CalibrationDataReader over preprocessed arrays {modality: (N, 3, H, W)}, CALIB_BATCH samples at a time."""

    def __init__(self, data: Mapping[str, np.ndarray], batch: int = CALIB_BATCH) -> None:
        self.data = {m: np.ascontiguousarray(x, dtype=np.float32) for m, x in data.items()}
        self.n = len(next(iter(self.data.values())))
        self.batch = max(1, int(batch))
        self._iter: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, self.n, self.batch):
            yield {m: x[i:i + self.batch] for m, x in self.data.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches [start_index, end_index) (ORT's chunked calibration calls this)."""
        batches = list(self._batches())[start_index:end_index]
        self._iter = iter(batches)

    def __iter__(self):
        return self._batches()

    def __len__(self) -> int:
        return (self.n + self.batch - 1) // self.batch


def quantize_static_int8(src: str | Path, dst: str | Path, calibration: Mapping[str, np.ndarray],
                         method: str = DEFAULT_CALIB_METHOD, percentile: float = DEFAULT_PERCENTILE,
                         per_channel: bool = True, quantize_conv: bool = True, activations: str = "s8") -> Path:
    """Static INT8 in QDQ format, weights INT8 symmetric per channel; activations `s8` (INT8 symmetric: ORT CPU and
    TensorRT both run it) or `u8` (UINT8 asymmetric, the U8S8 scheme of ONNX Runtime's CPU kernels)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise GraftError(f"calibration method {method!r}: expected one of {', '.join(CALIB_METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise GraftError(f"static INT8 activations {activations!r}: expected one of {', '.join(ACTIVATION_TYPES)}")
    if not calibration or len(next(iter(calibration.values()))) == 0:
        raise GraftError("static INT8 quantisation needs calibration images (--calib-data ROOT)")
    dst = Path(dst)
    calib_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}[method]
    # CalibStridedMinMax=1: ORT collects (and, for histograms, merges) one batch at a time. Without it the
    # histogram calibrators keep every activation of every batch in memory (>20 GB for ViT-B x 3 modalities).
    extra = {"ActivationSymmetric": activations == "s8", "WeightSymmetric": True, "MatMulConstBOnly": True,
             "CalibStridedMinMax": 1, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".prep-") as tmp:
        prepped = preprocess(src, Path(tmp) / "prep.onnx")
        weighted, other = weight_matmuls(prepped)
        ops = ["MatMul", "Gemm"] + (["Conv"] if quantize_conv else [])
        try:
            with quiet():
                quantize_static(
                    str(prepped), str(dst), ArrayCalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops, per_channel=per_channel, reduce_range=False,
                    activation_type=QuantType.QInt8 if activations == "s8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=other,
                    use_external_data_format=_large(prepped), calibrate_method=calib_method, extra_options=extra,
                )
        except GraftError:
            raise
        except Exception as exc:
            raise _fail("INT8 static quantisation", exc) from None
    return dst
