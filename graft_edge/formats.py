"""The one table of deployable formats: every other list of formats is derived from it.

A row names a format as users type it (`--formats int8`), the artefact file it is (suffix after the
stem), its precision, the runtime that runs it, what it needs (calibration images, a GPU), what it is
built from, whether its embeddings are independent of their batch-mates, and its plot marker. The
exporter's option validation and build loop, the runtime's dispatch by file suffix, the frontier's
format list and data requirements, `serve` and `index build` (batch independence), report markers and
CLI help all read this table. Adding a format is adding a row here, its builder (graft_edge.export) and,
for a new runtime, its Embedder (graft_edge.runtime).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from graft_edge.errors import GraftError


@dataclass(frozen=True)
class Format:
    """One deployable format."""

    name: str  # what users type: --formats int8
    kind: str  # the export artefact kind (export.json): onnx-int8-dynamic; "" for the checkpoint itself
    suffix: str  # file name after the stem: model.int8-dynamic.onnx -> ".int8-dynamic.onnx"
    precision: str  # the artefact's metadata precision
    runtime: str  # torch | onnx | tensorrt | openvino
    source: str | None  # the format it is built from (None: from the checkpoint)
    needs_calibration: bool = False  # built from real images (--calib-data / --data)
    needs_gpu: bool = False  # built and run only on an NVIDIA GPU
    needs_bf16: bool = False  # built and run only on a CPU with native bf16 (AVX512-BF16 / AMX)
    needs_packages: tuple[str, ...] = ()  # optional packages it is built and run with (importable names)
    # a sample's embedding is the same whatever else is in its batch (up to float rounding); False where the
    # graph computes something over the whole batch (dynamic INT8's activation scales)
    batch_independent: bool = True
    marker: str = "o"  # matplotlib marker in the frontier plot
    help: str = ""


TRT, OV = ("tensorrt",), ("openvino",)  # the optional packages of the TensorRT and OpenVINO rows
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("torch", "", ".pt", "fp32", "torch", None, marker="o", help="the PyTorch checkpoint itself"),
    Format("onnx", "onnx-fp32", ".onnx", "fp32", "onnx", None, marker="s", help="FP32 ONNX, checked against PyTorch"),
    Format("int8", "onnx-int8-dynamic", ".int8-dynamic.onnx", "int8-dynamic", "onnx", "onnx", marker="^",
           batch_independent=False,
           help="ONNX Runtime INT8, dynamic quantisation (weights INT8, activations at run time)"),
    Format("int8-static", "onnx-int8-static", ".int8-static.onnx", "int8-static", "onnx", "onnx",
           needs_calibration=True, marker="v", help="INT8 static Q/DQ, calibrated on real images"),
    Format("int8-u8s8", "onnx-int8-u8s8", ".int8-u8s8.onnx", "int8-static", "onnx", "onnx", needs_calibration=True,
           marker="<", help="INT8 static Q/DQ for CPUs: UINT8 asymmetric activations, INT8 per-channel weights (U8S8)"),
    # Fused transformer graphs (graft_edge.export.fusion): every self-attention is one ONNX Runtime contrib node
    # (com.microsoft::MultiHeadAttention), exported from the checkpoint; int8-fused quantises that graph. Static
    # Q/DQ (S8S8 or U8S8) of the fused graph was slower than of the plain one and less accurate on DeiT-B x 3
    # (benchmarks/README.md "Fused transformer graphs and U8S8"), so it is no format.
    Format("onnx-fused", "onnx-fp32-fused", ".fused.onnx", "fp32", "onnx", None, marker="H",
           help="FP32 ONNX with every attention one ONNX Runtime contrib node (MultiHeadAttention by default)"),
    Format("int8-fused", "onnx-int8-dynamic-fused", ".int8-dynamic-fused.onnx", "int8-dynamic", "onnx", "onnx-fused",
           marker="8", batch_independent=False, help="ONNX Runtime INT8 dynamic of the fused-attention graph"),
    Format("fp16", "onnx-fp16", ".fp16.onnx", "fp16", "onnx", "onnx", marker="D",
           help="FP16 ONNX with LayerNorm/Softmax kept FP32"),
    Format("trt-fp32", "trt-fp32", ".trt-fp32.engine", "fp32", "tensorrt", "onnx", needs_gpu=True, needs_packages=TRT, marker="P",
           help="TensorRT FP32 engine"),
    Format("trt-fp16", "trt-fp16", ".trt-fp16.engine", "fp16", "tensorrt", "fp16", needs_gpu=True, needs_packages=TRT, marker="X",
           help="TensorRT FP16 engine"),
    Format("trt-int8", "trt-int8", ".trt-int8.engine", "int8", "tensorrt", "int8-static", needs_calibration=True,
           needs_gpu=True, needs_packages=TRT, marker="*", help="TensorRT INT8 engine from the Q/DQ ONNX"),
    # OpenVINO IR (.xml graph + .bin weights). bf16 is its own artefact, not a run-time switch: its IR stores
    # the weights in FP16 (half the FP32 file; bf16 compute rounds them further anyway) and its metadata tells
    # the runtime to compile it with INFERENCE_PRECISION_HINT bf16, so the file alone says how it runs and the
    # frontier, bench and eval treat it as one more format.
    Format("openvino", "openvino-fp32", ".openvino.xml", "fp32", "openvino", "onnx", needs_packages=OV, marker="h",
           help="OpenVINO IR, FP32 inference"),
    Format("openvino-bf16", "openvino-bf16", ".openvino-bf16.xml", "bf16", "openvino", "onnx", needs_bf16=True,
           needs_packages=OV, marker="p", help="OpenVINO IR run in bf16 (CPUs with AVX512-BF16 or AMX)"),
    Format("openvino-int8", "openvino-int8", ".openvino-int8.xml", "int8-static", "openvino", "onnx",
           needs_calibration=True, needs_packages=(*OV, "nncf"), marker="d",
           help="OpenVINO IR quantised to INT8 by NNCF (transformer settings, symmetric), calibrated on real images"),
)}
ALIASES = {"trt": "trt-fp16"}  # shorthand accepted wherever format names are
DEFAULT_FRONTIER_FORMATS = ("torch", "onnx", "int8")


def get_format(name: str) -> Format:
    """The row for a format name (or alias); GraftError listing the names otherwise."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in FORMATS:
        raise GraftError(f"unknown format {name!r}: expected one of {', '.join(names())}")
    return FORMATS[key]


def names(include_aliases: bool = True) -> list[str]:
    """Every accepted format name, in table order."""
    return list(FORMATS) + (list(ALIASES) if include_aliases else [])


def parse_formats(text: str | Sequence[str | Format]) -> tuple[Format, ...]:
    """'torch,onnx,int8' (or names, or rows) -> their rows, aliases resolved, repeats dropped; one line naming a bad
    name. The one parse of a format list: everything downstream holds rows."""
    items = [t if isinstance(t, Format) else str(t).strip().lower()
             for t in (text.split(",") if isinstance(text, str) else text) if isinstance(t, Format) or str(t).strip()]
    bad = [n for n in items if isinstance(n, str) and n not in FORMATS and n not in ALIASES]
    if bad or not items:
        raise GraftError(f"unknown format {bad[0] if bad else text!r}: expected a comma-separated list of "
                         f"{', '.join(names())}")
    return tuple(dict.fromkeys(t if isinstance(t, Format) else FORMATS[ALIASES.get(t, t)] for t in items))


def by_kind(kind: str) -> Format:
    """The row of an export artefact kind (onnx-int8-dynamic -> int8)."""
    for f in FORMATS.values():
        if f.kind == kind:
            return f
    raise GraftError(f"unknown artefact kind {kind!r}")


def needing_calibration() -> tuple[str, ...]:
    """Formats built from real images (they need a dataset)."""
    return tuple(n for n, f in FORMATS.items() if f.needs_calibration)


def batch_independent_formats() -> tuple[str, ...]:
    """Formats whose embedding of a sample does not depend on its batch-mates."""
    return tuple(n for n, f in FORMATS.items() if f.batch_independent)


def batch_dependent_formats() -> tuple[str, ...]:
    """Formats whose embedding of a sample depends on its batch-mates."""
    return tuple(n for n, f in FORMATS.items() if not f.batch_independent)


def batch_dependent_format(runtime: str, precision: str | None) -> Format | None:
    """The batch-dependent row an artefact of this runtime and metadata precision is, or None (batch-independent)."""
    return next((f for f in FORMATS.values() if not f.batch_independent and f.runtime == runtime
                 and f.precision == precision), None)


def batch_dependence_note(what: str | Path, runtime: str, precision: str | None) -> str | None:
    """One line saying why `what` gives embeddings that depend on their batch-mates, or None when it does not.

    Read wherever embeddings made in different batches are compared: `serve` (the dynamic batcher picks the
    batch-mates) and `index build` (a gallery embedded offline, queries embedded online).
    """
    fmt = batch_dependent_format(runtime, precision)
    if fmt is None:
        return None
    return (f"{what} is {fmt.name} ({precision}): its embedding of a sample depends on the other samples in the same "
            f"batch, so embeddings made in different batches differ slightly; batch-independent formats: "
            f"{', '.join(batch_independent_formats())}")


def markers() -> dict[str, str]:
    """{format name: plot marker}, aliases included."""
    out = {n: f.marker for n, f in FORMATS.items()}
    out.update({a: FORMATS[t].marker for a, t in ALIASES.items()})
    return out


def help_text() -> str:
    """One line per format for --help."""
    return "; ".join(f"{n}: {f.help}" for n, f in FORMATS.items())
