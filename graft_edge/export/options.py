"""What to export and how strictly to check it: the `export` command's options as one frozen record."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from graft_edge.artefact.record import BatchRange
from graft_edge.cpu import require_bf16
from graft_edge.errors import GraftError
from graft_edge.export.calibration import CALIB_METHODS, DEFAULT_CALIB_METHOD, DEFAULT_CALIB_SAMPLES, MIN_CALIB_SAMPLES
from graft_edge.export.fusion import ATTENTION_OPS, DEFAULT_ATTENTION_OP
from graft_edge.export.onnx import DEFAULT_OPSET, check_opset
from graft_edge.export.tensorrt import DEFAULT_BATCH, DEFAULT_WORKSPACE_MB, check_workspace, parse_batch_range
from graft_edge.formats import FORMATS, Format, get_format

DEFAULT_TOLERANCE = 1e-4
DEFAULT_MIN_COSINE_FP16 = 0.999
DEFAULT_MIN_COSINE_INT8 = 0.98
DEFAULT_MIN_COSINE_BF16 = 0.999


def check_calibration(asked: dict[str, str], calib_data: str | Path | None) -> None:
    """GraftError naming the first format built from real images, as `asked` spells it ({format name: the option
    that asked for it}), when there is no calibration data."""
    needs = [label for name, label in asked.items() if get_format(name).needs_calibration]
    if needs and not calib_data:
        raise GraftError(f"{needs[0]} needs --calib-data ROOT (a dataset whose train split calibrates the "
                         "activation ranges)")


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how strictly to check it (the CLI's options, as data)."""

    # the formats to keep in OUT (rows or names of graft_edge.formats); the formats they are built from (the
    # table's `source` column) are built and checked too, and kept only when listed
    formats: tuple[Format | str, ...] = ("onnx",)
    attention_op: str = DEFAULT_ATTENTION_OP  # the contrib op of the fused-attention graphs
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

    def rows(self) -> tuple[Format, ...]:
        """The formats kept in OUT, in table order."""
        kept = {get_format(f).name if isinstance(f, str) else f.name for f in self.formats}
        return tuple(f for n, f in FORMATS.items() if n in kept)

    def plan(self) -> tuple[Format, ...]:
        """Every format to build: the kept ones and, through the `source` column, what they are built from; in
        table order (a source always precedes what is built from it)."""
        needed = {f.name for f in self.rows()}
        frontier = list(needed)
        while frontier:
            source = FORMATS[frontier.pop()].source
            if source is not None and source not in needed:
                needed.add(source)
                frontier.append(source)
        return tuple(f for n, f in FORMATS.items() if n in needed)

    def keeps(self, fmt: Format) -> bool:
        """Whether `fmt` is kept in OUT (not only built as the source of another)."""
        return fmt in self.rows()

    def min_cosine(self, precision: str) -> float:
        """The cosine a reduced-precision artefact must reach against the FP32 PyTorch embeddings."""
        return {"fp16": self.min_cosine_fp16, "bf16": self.min_cosine_bf16}.get(precision, self.min_cosine_int8)

    def needs_calibration(self) -> bool:
        """Whether a format to build is made from real images (calibration)."""
        return any(f.needs_calibration for f in self.plan())

    def validated(self) -> ExportOptions:
        """Options checked and normalised (names -> rows of the format table); GraftError (one line) on the first
        bad one."""
        check_opset(self.opset)
        rows = tuple(get_format(f) if isinstance(f, str) else f for f in self.formats)
        if not rows:
            raise GraftError("nothing to export: name at least one format (--formats)")
        if any(f.runtime == "torch" for f in rows):
            raise GraftError("--formats torch: the checkpoint itself is the torch format; nothing to export")
        if self.attention_op not in ATTENTION_OPS:
            raise GraftError(f"--attention-op {self.attention_op!r}: expected {', '.join(ATTENTION_OPS)}")
        opt = replace(self, formats=tuple(dict.fromkeys(rows)), batch=parse_batch_range(self.batch))
        check_calibration({f.name: f"--formats {f.name}" for f in opt.plan()}, self.calib_data)
        for fmt in opt.plan():
            if fmt.needs_bf16:
                require_bf16(f"--formats {fmt.name}")
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
        return opt
