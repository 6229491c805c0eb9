"""What an exported artefact is: its metadata record, where its companion files live, how to read and check it.

A leaf module: `export` writes artefacts through it and `runtime` reads them through it, and neither
imports the other. Every artefact carries the same record twice: as ONNX `metadata_props` (one entry
per key, every value JSON-encoded) where the format has them, and as a JSON sidecar
`<artefact stem>.json` (model.onnx -> model.json, model.trt-fp16.engine -> model.trt-fp16.json) that
also lists the artefact's files with their sizes and SHA-256 (a file cannot carry its own hash).

Runtimes see an artefact as an `EmbedderInfo` and run it through the `Embedder` protocol.
"""
from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from graft_edge import __version__
from graft_edge.errors import GraftError
from graft_edge.fileio import atomic_write, sha256_file, write_json

FORMAT = "graft-edge-export"
FORMAT_VERSION = 1
OUTPUT_NAME = "embedding"
# the optional (B, M) float32 0/1 input saying which modalities each sample has (missing sensors, see GraFT.embed_masked)
PRESENCE_INPUT = "present"
# keys every runtime relies on; ArtefactMeta.from_dict checks they are present
REQUIRED_KEYS = ("format", "modalities", "input_names", "output_name", "img_size", "mean", "std", "embed_dim",
                 "precision")
# weights above this many bytes go to NAME.onnx.data beside the graph (protobuf's 2 GB limit)
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
MAX_BATCH = 4096  # upper bound of every artefact's dynamic batch dimension
DEFAULT_BATCH = "1:8:64"  # the batch range an engine is built for, MIN:OPT:MAX


# ------------------------------------------------------------------------------------------ batch range

@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an artefact accepts (min, max) and is tuned for (opt)."""

    min: int
    opt: int
    max: int

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max


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


# ------------------------------------------------------------------------------------------ files

def sidecar_path(artefact: str | Path) -> Path:
    """The JSON sidecar of an artefact: the file name with its last suffix replaced by .json."""
    return Path(artefact).with_suffix(".json")


def data_file(onnx_path: str | Path) -> Path:
    """Where the external weights of an ONNX file live when it has them: NAME.onnx.data beside it."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".data")


def _external_locations(path: Path) -> set[str]:
    """File names an ONNX graph's initialisers point to (empty when the weights are inside the graph)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable graph: fall back to the exporter's naming
        return {data_file(path).name}
    return {entry.value for init in proto.graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL
            for entry in init.external_data if entry.key == "location"}


def artefact_files(path: str | Path) -> list[Path]:
    """The files one artefact consists of: the file itself plus ONNX external-data files or an IR's .bin."""
    path = Path(path)
    files = [path]
    if path.suffix.lower() == ".xml" and path.with_suffix(".bin").is_file():
        files.append(path.with_suffix(".bin"))
    if path.suffix.lower() == ".onnx" and path.is_file():
        files += [path.parent / loc for loc in sorted(_external_locations(path))
                  if (path.parent / loc).is_file() and path.parent / loc != path]
    return files


def artefact_size(path: str | Path) -> int:
    """Bytes on disk of an artefact (graph + external data or weights)."""
    return sum(f.stat().st_size for f in artefact_files(path) if f.is_file())


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


# ------------------------------------------------------------------------------------------ the record

@dataclass(frozen=True)
class ArtefactMeta:
    """The metadata record of one artefact: what a runtime needs to preprocess it, and where it came from.

    Serialised flat (`to_dict`): the typed fields as top-level keys, then `extra` (provenance such as the
    source checkpoint's SHA-256, parameter counts, pruning history, parity, tool versions).
    """

    modalities: tuple[str, ...]
    img_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    precision: str  # fp32 | fp16 | int8-dynamic | int8-static | ...
    input_names: tuple[str, ...] = ()
    output_name: str = OUTPUT_NAME
    batch: BatchRange | None = None  # None: any batch up to MAX_BATCH
    extra: dict[str, Any] = field(default_factory=dict)
    presence_input: str | None = None  # name of the (B, M) presence-mask input; None: every modality is required

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON form (the keys of ONNX metadata_props and the sidecar)."""
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.extra,
                               "modalities": list(self.modalities), "input_names": list(self.input_names or
                                                                                        self.modalities),
                               "output_name": self.output_name, "img_size": list(self.img_size),
                               "mean": list(self.mean), "std": list(self.std), "embed_dim": self.embed_dim,
                               "precision": self.precision}
        if self.batch is not None:
            out["batch_range"] = [self.batch.min, self.batch.opt, self.batch.max]
        if self.presence_input:
            out["presence_input"] = self.presence_input
        return out

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], where: str) -> ArtefactMeta:
        """Validate the keys a runtime needs; GraftError naming the first missing or malformed one."""
        if meta.get("format") != FORMAT:
            raise GraftError(f"{where} carries no graft-edge metadata (export it with `graft-edge export`)")
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise GraftError(f"{where}: metadata lacks {missing[0]!r} (re-export it with `graft-edge export`)")
        try:
            mods = tuple(str(m) for m in meta["modalities"])
            size = tuple(int(v) for v in meta["img_size"])
            mean = tuple(float(v) for v in meta["mean"])
            std = tuple(float(v) for v in meta["std"])
            dim = int(meta["embed_dim"])
            batch = BatchRange(*(int(v) for v in meta["batch_range"])) if meta.get("batch_range") else None
        except (TypeError, ValueError) as exc:
            raise GraftError(f"{where}: malformed metadata ({exc})") from None
        if not mods or len(size) != 2 or len(mean) != 3 or len(std) != 3 or dim < 1:
            raise GraftError(f"{where}: malformed metadata (modalities {list(mods)}, img_size {list(size)}, "
                             f"mean {list(mean)}, std {list(std)})")
        typed = {"format", "format_version", "modalities", "input_names", "output_name", "img_size", "mean", "std",
                 "embed_dim", "precision", "batch_range", "presence_input"}
        return cls(modalities=mods, img_size=size, mean=mean, std=std, embed_dim=dim, precision=str(meta["precision"]),
                   input_names=tuple(str(n) for n in meta["input_names"]), output_name=str(meta["output_name"]),
                   batch=batch, extra={k: v for k, v in meta.items() if k not in typed},
                   presence_input=str(meta["presence_input"]) if meta.get("presence_input") else None)


def encode_props(meta: Mapping[str, Any]) -> dict[str, str]:
    """Metadata -> ONNX metadata_props strings (JSON values)."""
    return {str(k): json.dumps(v, default=str, separators=(",", ":")) for k, v in meta.items()}


def decode_props(props: Mapping[str, str]) -> dict[str, Any]:
    """ONNX metadata_props strings -> metadata (values that are not JSON stay strings)."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def write_onnx_metadata(path: str | Path, meta: Mapping[str, Any]) -> None:
    """Replace the graft-edge entries of an ONNX file's metadata_props (external weights untouched)."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)  # keeps external-data references as they are
    props = encode_props(meta)
    # keep tools' namespaced entries (onnx.infer, onnx.quant.pre_process); drop graft-edge keys (no dot) of the
    # model this one was derived from, so an INT8 file does not inherit FP32-only entries
    kept = [p for p in proto.metadata_props if p.key not in props and "." in p.key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "graft-edge", __version__
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


def read_onnx_props(path: str | Path) -> dict[str, Any]:
    """The decoded metadata_props of an ONNX file (graph only; external weights are not read)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise GraftError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    return decode_props({p.key: p.value for p in proto.metadata_props})


def read_sidecar(artefact: str | Path) -> dict[str, Any] | None:
    """The artefact's JSON sidecar, or None when there is none; GraftError when it is malformed."""
    path = sidecar_path(artefact)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraftError(f"metadata sidecar {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GraftError(f"metadata sidecar {path} does not hold a JSON object")
    return data


def write_sidecar(artefact: str | Path, meta: Mapping[str, Any], files: list[Path]) -> Path:
    """Write `<artefact stem>.json`: the record plus the artefact's files with their sizes and SHA-256."""
    facts = [{"name": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]
    path = sidecar_path(artefact)
    write_json(path, {**meta, "artefact": {"file": Path(artefact).name, "files": facts}})
    return path


# ------------------------------------------------------------------------------------------ the runtime view

@dataclass(frozen=True)
class EmbedderInfo:
    """Everything a runtime needs to preprocess and describe a model."""

    format: str  # the runtime: torch | onnx | tensorrt
    path: str
    modalities: tuple[str, ...]
    img_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    params_embedding: int
    params_nonzero: int
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (precision, history, ...)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = asdict(self)
        d["modalities"], d["img_size"] = list(self.modalities), list(self.img_size)
        return d


class Embedder(Protocol):
    """Maps a batch of per-modality images to L2-normalised embeddings."""

    info: EmbedderInfo

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: float32 (B, 3, H, W) normalised} -> float32 (B, D)."""
        ...


def embedder_info(meta: Mapping[str, Any], path: str | Path, runtime: str,
                  extra: Mapping[str, Any] | None = None) -> EmbedderInfo:
    """An EmbedderInfo from an artefact's metadata (validated) plus runtime facts."""
    rec = ArtefactMeta.from_dict(meta, str(path))
    skip = {"params_embedding", "params_nonzero", "input_layout", "output", "artefact"}
    info_extra = {k: v for k, v in rec.extra.items() if k not in skip}
    info_extra.update(precision=rec.precision, input_names=list(rec.input_names), output_name=rec.output_name,
                      presence_input=rec.presence_input)
    if rec.batch is not None:
        info_extra["batch_range"] = [rec.batch.min, rec.batch.opt, rec.batch.max]
    info_extra.update(extra or {})
    return EmbedderInfo(format=runtime, path=str(path), modalities=rec.modalities, img_size=rec.img_size,
                        mean=rec.mean, std=rec.std, embed_dim=rec.embed_dim,
                        params_embedding=int(rec.extra.get("params_embedding", 0)),
                        params_nonzero=int(rec.extra.get("params_nonzero", 0)), extra=info_extra)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """An artefact's metadata: ONNX metadata_props first, the JSON sidecar as fallback (or the only source)."""
    path = Path(path)
    meta = read_onnx_props(path) if path.suffix.lower() == ".onnx" else {}
    if meta.get("format") != FORMAT:
        meta = read_sidecar(path) or meta
    return meta
