"""The metadata record of an exported artefact: its typed fields, its JSON sidecar, the batch range it accepts.

Every artefact carries the same record: as ONNX `metadata_props` where the format has them
(`graft_edge.artefact.onnx_file`) and always as a JSON sidecar `<artefact stem>.json` (model.onnx ->
model.json, model.trt-fp16.engine -> model.trt-fp16.json) that also lists the artefact's files with their
sizes and SHA-256 (a file cannot carry its own hash).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from graft_edge.errors import GraftError
from graft_edge.fileio import sha256_file, write_json

FORMAT = "graft-edge-export"
FORMAT_VERSION = 1
OUTPUT_NAME = "embedding"
# the optional (B, M) float32 0/1 input saying which modalities each sample has (missing sensors, see GraFT.embed_masked)
PRESENCE_INPUT = "present"
# keys every runtime relies on; ArtefactMeta.from_dict checks they are present
REQUIRED_KEYS = ("format", "modalities", "input_names", "output_name", "img_size", "mean", "std", "embed_dim",
                 "precision")
MAX_BATCH = 4096  # upper bound of every artefact's dynamic batch dimension


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


def sidecar_path(artefact: str | Path) -> Path:
    """The JSON sidecar of an artefact: the file name with its last suffix replaced by .json."""
    return Path(artefact).with_suffix(".json")


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

