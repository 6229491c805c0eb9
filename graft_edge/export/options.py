"""What to export and how strictly to check it: the `export` command's options as one frozen record."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from graft_edge.artefact import DEFAULT_BATCH, BatchRange, parse_batch_range
from graft_edge.cpu import require_bf16
from graft_edge.errors import GraftError
from graft_edge.export.calibration import CALIB_METHODS, DEFAULT_CALIB_METHOD, DEFAULT_CALIB_SAMPLES, MIN_CALIB_SAMPLES
from graft_edge.export.fusion import ATTENTION_OPS, DEFAULT_ATTENTION_OP
from graft_edge.export.onnx import DEFAULT_OPSET, check_opset
from graft_edge.export.tensorrt import DEFAULT_WORKSPACE_MB, check_workspace
from graft_edge.formats import FORMATS, Format, get_format

INT8_MODES = {"dynamic": "int8", "static": "int8-static", "u8s8": "int8-u8s8"}  # --int8 MODE -> format name
# --fused MODE -> format name (fused-attention graphs: graft_edge.export.fusion)
FUSED_MODES = {"fp32": "onnx-fused", "dynamic": "int8-fused"}
# --openvino MODE -> format name, from the table: openvino -> fp32, openvino-bf16 -> bf16, openvino-int8 -> int8
OPENVINO_MODES = {(n.split("-", 1)[1] if "-" in n else "fp32"): n for n, f in FORMATS.items()
                  if f.runtime == "openvino"}
DEFAULT_TOLERANCE = 1e-4
DEFAULT_MIN_COSINE_FP16 = 0.999
DEFAULT_MIN_COSINE_INT8 = 0.98
DEFAULT_MIN_COSINE_BF16 = 0.999


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how strictly to check it (the CLI's options, as data)."""

    onnx: bool = True  # keep the FP32 ONNX in OUT (it is always built: everything else derives from it)
    int8: tuple[str, ...] = ()  # subset of INT8_MODES: dynamic, static, u8s8
    fused: tuple[str, ...] = ()  # subset of FUSED_MODES: fp32, dynamic
    attention_op: str = DEFAULT_ATTENTION_OP  # the contrib op of the fused graphs
    fp16: bool = False
    trt: bool = False
    openvino: tuple[str, ...] = ()  # subset of OPENVINO_MODES: fp32, bf16, int8
    batch: str | BatchRange = DEFAULT_BATCH  # TensorRT optimisation profile MIN:OPT:MAX
    calib_data: str | Path | None = None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_method: str = DEFAULT_CALIB_METHOD
    opset: int = DEFAULT_OPSET
    tolerance: float = DEFAULT_TOLERANCE  # FP32 max abs diff allowed vs PyTorch
    min_cosine_fp16: float = DEFAULT_MIN_COSINE_FP16
    min_cosine_int8: float = DEFAULT_MIN_COSINE_INT8
    min_cosine_bf16: float = DEFAULT_MIN_COSINE_BF16
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    sparse_weights: bool | None = None  # None: on when the pruning history says 2:4
    external_data: bool | None = None  # None: only when the weights exceed ~1.8 GB
    name: str = "model"

    @classmethod
    def for_formats(cls, names: Sequence[str], **kwargs) -> ExportOptions:
        """Options that produce the given formats (names from graft_edge.formats; `torch` needs no export)."""
        rows = [get_format(n) for n in names]
        wanted = {f.name for f in rows}
        int8 = tuple(mode for mode, fmt in INT8_MODES.items()
                     if fmt in wanted or (fmt == "int8-static" and "trt-int8" in wanted))
        openvino = tuple(mode for mode, fmt in OPENVINO_MODES.items() if fmt in wanted)
        fused = tuple(mode for mode, fmt in FUSED_MODES.items() if fmt in wanted)
        return cls(onnx="onnx" in wanted, int8=int8, fused=fused, fp16=bool(wanted & {"fp16", "trt-fp16"}),
                   trt=any(f.runtime == "tensorrt" for f in rows), openvino=openvino, **kwargs)

    def formats(self) -> tuple[Format, ...]:
        """The formats these options ask for, in table order (sources before what is built from them)."""
        wanted = {INT8_MODES[m] for m in self.int8} | ({"onnx"} if self.onnx else set())
        wanted |= {OPENVINO_MODES[m] for m in self.openvino if m in OPENVINO_MODES}
        wanted |= {FUSED_MODES[m] for m in self.fused if m in FUSED_MODES}
        if self.fp16:
            wanted.add("fp16")
        if self.trt:
            wanted |= {"trt-fp32"} | ({"trt-fp16"} if self.fp16 else set()) | (
                {"trt-int8"} if "static" in self.int8 else set())
        return tuple(f for n, f in FORMATS.items() if n in wanted)

    def min_cosine(self, precision: str) -> float:
        """The cosine a reduced-precision artefact must reach against the FP32 PyTorch embeddings."""
        return {"fp16": self.min_cosine_fp16, "bf16": self.min_cosine_bf16}.get(precision, self.min_cosine_int8)

    def needs_calibration(self) -> bool:
        """Whether a requested format is built from real images (calibration)."""
        return any(f.needs_calibration for f in self.formats())

    def validated(self) -> ExportOptions:
        """Options checked and normalised; GraftError (one line) on the first bad one."""
        check_opset(self.opset)
        int8 = tuple(dict.fromkeys(str(m).strip().lower() for m in self.int8 if str(m).strip()))
        bad = [m for m in int8 if m not in INT8_MODES]
        if bad:
            raise GraftError(f"--int8 {bad[0]!r}: expected {', '.join(INT8_MODES)}")
        openvino = tuple(dict.fromkeys(str(m).strip().lower() for m in self.openvino if str(m).strip()))
        bad = [m for m in openvino if m not in OPENVINO_MODES]
        if bad:
            raise GraftError(f"--openvino {bad[0]!r}: expected {', '.join(OPENVINO_MODES)}")
        fused = tuple(dict.fromkeys(str(m).strip().lower() for m in self.fused if str(m).strip()))
        bad = [m for m in fused if m not in FUSED_MODES]
        if bad:
            raise GraftError(f"--fused {bad[0]!r}: expected {', '.join(FUSED_MODES)}")
        if self.attention_op not in ATTENTION_OPS:
            raise GraftError(f"--attention-op {self.attention_op!r}: expected {', '.join(ATTENTION_OPS)}")
        needs_images = [f"--int8 {m}" for m in int8 if FORMATS[INT8_MODES[m]].needs_calibration] + [
            f"--openvino {m}" for m in openvino if FORMATS[OPENVINO_MODES[m]].needs_calibration] + [
            f"--fused {m}" for m in fused if FORMATS[FUSED_MODES[m]].needs_calibration]
        if needs_images and not self.calib_data:
            raise GraftError(f"{needs_images[0]} needs --calib-data ROOT (a dataset whose train split calibrates the "
                             "activation ranges)")
        if "bf16" in openvino:
            require_bf16("--openvino bf16")
        if self.calib_method not in CALIB_METHODS:
            raise GraftError(f"--calib-method {self.calib_method!r}: expected one of {', '.join(CALIB_METHODS)}")
        if self.calib_samples < MIN_CALIB_SAMPLES:
            raise GraftError(f"--calib-samples {self.calib_samples}: at least {MIN_CALIB_SAMPLES} images are needed "
                             "for reliable INT8 ranges")
        if not (self.tolerance > 0 and np.isfinite(self.tolerance)):
            raise GraftError(f"--tolerance {self.tolerance}: expected a positive number (max abs diff of FP32 "
                             "embeddings)")
        for flag, value in (("--min-cosine-fp16", self.min_cosine_fp16), ("--min-cosine-int8", self.min_cosine_int8),
                            ("--min-cosine-bf16", self.min_cosine_bf16)):
            if not -1.0 <= value <= 1.0:
                raise GraftError(f"{flag} {value}: a cosine lies in [-1, 1]")
        check_workspace(self.workspace_mb)
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise GraftError(f"--name {self.name!r}: expected a plain file stem such as 'model'")
        if not (self.onnx or int8 or self.fp16 or self.trt or openvino or fused):
            raise GraftError("nothing to export: --no-onnx without --int8, --fused, --fp16, --trt or --openvino")
        return replace(self, int8=int8, fused=fused, openvino=openvino, batch=parse_batch_range(self.batch))
