"""TensorRT engines from the exported ONNX, with the TensorRT Python API (optional extra graft-edge[trt]).

Precision differs by TensorRT major version (`trt_plan` decides; unit-tested without TensorRT):
- TensorRT 10 (JetPack 6): weakly typed networks; FP16 / INT8 come from builder flags
  (BuilderFlag.FP16, BuilderFlag.INT8 for the Q/DQ ONNX). LayerNorm, Softmax and reductions are
  pinned to FP32 (layer precision + PREFER_PRECISION_CONSTRAINTS): ViT LayerNorm overflows FP16.
- TensorRT >= 11: every network is strongly typed and those flags are gone; FP16 comes from the
  FP16 ONNX (fp16.py keeps LayerNorm/Softmax FP32 there) and INT8 from the Q/DQ ONNX.
FP32 engines clear TF32 so they really are FP32. Optional SPARSE_WEIGHTS for 2:4-pruned models.
One optimisation profile covers the batch range (--batch MIN:OPT:MAX); the timing cache is
persisted beside the engines (`timing.cache`) so rebuilds skip kernel timing.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from graft_edge.artefact.record import MAX_BATCH, BatchRange
from graft_edge.errors import GraftError
from graft_edge.fileio import atomic_write
from graft_edge.formats import FORMATS
from graft_edge.runtime import TensorRTUnavailable, require_tensorrt

TRT_PRECISIONS = tuple(f.precision for f in FORMATS.values() if f.runtime == "tensorrt")  # fp32, fp16, int8
DEFAULT_WORKSPACE_MB = 4096
TIMING_CACHE = "timing.cache"
DEFAULT_BATCH = "1:8:64"  # the batch range an engine is built for, MIN:OPT:MAX


def parse_batch_range(text: str | BatchRange) -> BatchRange:
    """'MIN:OPT:MAX' (e.g. 1:8:64) or a single 'N' (N:N:N) -> BatchRange; GraftError on anything else."""
    if isinstance(text, BatchRange):
        values = [text.min, text.opt, text.max]
    else:
        raw = str(text).strip()
        parts = raw.split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
            raise GraftError(f"--batch {raw!r}: expected MIN:OPT:MAX of positive integers, e.g. {DEFAULT_BATCH}, "
                             "or one batch size N")
        values = [int(p) for p in parts]
    lo, opt, hi = values
    if lo < 1:
        raise GraftError(f"--batch {lo}:{opt}:{hi}: batch sizes start at 1")
    if not lo <= opt <= hi:
        raise GraftError(f"--batch {lo}:{opt}:{hi}: expected MIN <= OPT <= MAX")
    if hi > MAX_BATCH:
        raise GraftError(f"--batch {lo}:{opt}:{hi}: MAX is at most {MAX_BATCH} (the ONNX batch dimension's bound)")
    return BatchRange(lo, opt, hi)



def check_workspace(workspace_mb: int) -> int:
    """The TensorRT workspace in MiB if it is usable; GraftError otherwise."""
    if workspace_mb < 64:
        raise GraftError(f"--workspace {workspace_mb} MiB: give TensorRT at least 64 MiB")
    return workspace_mb


def profile_shapes(batch: BatchRange, inputs: Mapping[str, Sequence[int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """{input name: (min shape, opt shape, max shape)} for per-sample shapes like (3, H, W)."""
    return {name: tuple((b, *[int(d) for d in shape]) for b in (batch.min, batch.opt, batch.max))
            for name, shape in inputs.items()}


@dataclass(frozen=True)
class TrtPlan:
    """How to build one engine on one TensorRT major version."""

    major: int
    precision: str  # fp32 | fp16 | int8 (the engine's compute precision)
    onnx_variant: str  # the format whose ONNX it parses (graft_edge.formats): onnx | fp16 | int8-static
    strongly_typed: bool  # precision taken from the ONNX types (TensorRT >= 11 always)
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag member names
    builder_flags: tuple[str, ...]  # BuilderFlag member names to set
    cleared_flags: tuple[str, ...]  # BuilderFlag member names to clear
    pin_fp32_layers: bool  # pin LayerNorm / Softmax / reductions to FP32 via layer precision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trt_major(version: str) -> int:
    """'10.3.0.26' -> 10; GraftError for a version string that is not one."""
    match = re.match(r"\s*(\d+)", str(version))
    if not match:
        raise GraftError(f"cannot read the TensorRT version {version!r}")
    return int(match.group(1))


def trt_plan(major: int, precision: str, sparse: bool = False) -> TrtPlan:
    """The version dispatch: builder flags on TensorRT 10, strongly typed FP16/QDQ ONNX on >= 11."""
    if precision not in TRT_PRECISIONS:
        raise GraftError(f"TensorRT precision {precision!r}: expected one of {', '.join(TRT_PRECISIONS)}")
    if major < 10:
        raise GraftError(f"TensorRT {major}.x is too old: graft-edge builds engines with TensorRT 10 or newer")
    sparse_flags = ("SPARSE_WEIGHTS",) if sparse else ()
    cleared = ("TF32",) if precision == "fp32" else ()
    if major == 10:
        flags = {"fp32": (), "fp16": ("FP16", "PREFER_PRECISION_CONSTRAINTS"),
                 "int8": ("INT8", "FP16", "PREFER_PRECISION_CONSTRAINTS")}[precision]
        variant = "int8-static" if precision == "int8" else "onnx"
        return TrtPlan(major, precision, variant, False, (), flags + sparse_flags, cleared, precision != "fp32")
    variant = {"fp32": "onnx", "fp16": "fp16", "int8": "int8-static"}[precision]
    return TrtPlan(major, precision, variant, True, (), sparse_flags, cleared, False)


def _pin_fp32(trt: Any, network: Any) -> int:
    """Pin LayerNorm / Softmax / reduction layers (and their outputs) to FP32; returns how many."""
    kinds = [getattr(trt.LayerType, n) for n in ("NORMALIZATION", "SOFTMAX", "REDUCE") if hasattr(trt.LayerType, n)]
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=True)
    return cache


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp32",
                 batch: BatchRange | str = DEFAULT_BATCH, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 timing_cache: str | Path | None = None, sparse: bool = False,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Parse `onnx_path`, build a serialized engine for `precision` over `batch`, write it atomically.

    The ONNX must already be the variant `trt_plan` names for this TensorRT (FP16 ONNX for FP16 on
    TensorRT >= 11, the Q/DQ ONNX for INT8). Returns build facts for the metadata.
    """
    trt = require_tensorrt()
    batch = parse_batch_range(batch)
    major = trt_major(trt.__version__)
    plan = trt_plan(major, precision, sparse)
    check_workspace(workspace_mb)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no CUDA driver / device: TensorRT fails at builder creation
        raise TensorRTUnavailable(f"TensorRT could not start on the GPU ({type(exc).__name__}: {str(exc)[:160]})") from None
    if builder is None:
        raise TensorRTUnavailable("TensorRT could not create a builder (CUDA initialisation failed: is an NVIDIA GPU and driver present?)")
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise GraftError(f"TensorRT could not parse {Path(onnx_path).name}: {errors[0][:300] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    pinned = _pin_fp32(trt, network) if plan.pin_fp32_layers else 0
    inputs = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = tuple(tensor.shape)[1:]
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(batch, inputs).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    _load_timing_cache(config, cache_path)
    if log:
        log(f"building TensorRT {trt.__version__} {precision} engine (batch {batch}, "
            f"{'strongly typed' if plan.strongly_typed else 'builder flags ' + ','.join(plan.builder_flags) or 'fp32'})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise GraftError(f"TensorRT failed to build the {precision} engine from {Path(onnx_path).name} (see TensorRT's messages above)")
    atomic_write(engine_path, lambda p: p.write_bytes(bytes(serialized)))
    if cache_path is not None:
        blob = config.get_timing_cache().serialize()
        atomic_write(cache_path, lambda p: p.write_bytes(bytes(blob)))
    return {"tensorrt_version": str(trt.__version__), "plan": plan.to_dict(), "batch_profile": [batch.min, batch.opt, batch.max],
            "workspace_mb": int(workspace_mb), "sparse_weights": bool(sparse), "fp32_pinned_layers": pinned,
            "timing_cache": cache_path.name if cache_path else None, "source_onnx": Path(onnx_path).name}
