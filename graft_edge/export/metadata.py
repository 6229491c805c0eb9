"""Metadata shipped with every exported artefact: ONNX metadata_props and a JSON sidecar.

Everything an edge runtime needs to preprocess correctly and to trust the file: modalities and
their order (= the ONNX input order), input size, normalisation mean/std, embedding size,
parameter counts, the source checkpoint's SHA-256, pruning history, precision, the tool versions
that made it, and the parity numbers measured at export.

ONNX `metadata_props`: one entry per key below, every value JSON-encoded (strings quoted), so any
runtime with a JSON parser reads them back losslessly. The sidecar `<artefact stem>.json`
(model.onnx -> model.json, model.int8-static.onnx -> model.int8-static.json,
model.trt-fp16.engine -> model.trt-fp16.json) holds the same keys plus the artefact's file list,
sizes and SHA-256 (a file cannot carry its own hash).
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Mapping

from graft_edge.errors import GraftError

FORMAT = "graft-edge-export"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")
# keys every runtime relies on; read_metadata checks they are present
REQUIRED_KEYS = ("format", "modalities", "input_names", "output_name", "img_size", "mean", "std", "embed_dim", "precision")


def sidecar_path(artefact: str | Path) -> Path:
    """The JSON sidecar of an artefact: the file name with its last suffix replaced by .json."""
    return Path(artefact).with_suffix(".json")


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped an export (torch, onnx, onnxruntime, onnxscript, timm, graft-edge)."""
    import importlib.metadata as md

    from graft_edge import __version__

    out = {"graft_edge": __version__, "python": platform.python_version()}
    for dist, key in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("onnxscript", "onnxscript"), ("timm", "timm")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def model_metadata(model: Any, checkpoint: Any, checkpoint_path: str | Path, source_sha256: str,
                   output_name: str = "embedding") -> dict[str, Any]:
    """The precision-independent facts of a GraFT model and its checkpoint."""
    from graft_edge.model import count_params, embedding_params

    cfg = model.cfg
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "modalities": list(model.modalities),
        "input_names": list(model.modalities),
        "input_layout": "NCHW float32, RGB, resized to img_size, x = (pixel/255 - mean) / std",
        "output_name": output_name,
        "output": "L2-normalised embedding (B, embed_dim); match by cosine / Euclidean distance",
        "img_size": [int(v) for v in cfg.img_size],
        "mean": [float(v) for v in cfg.mean],
        "std": [float(v) for v in cfg.std],
        "embed_dim": int(model.embed_dim),
        "neck_feat": cfg.neck_feat,
        "backbone": cfg.backbone,
        "fusion": cfg.fusion,
        "preset": getattr(checkpoint.config, "preset", None),
        "params_total": count_params(model),
        "params_embedding": embedding_params(model),
        "params_nonzero": embedding_params(model, nonzero=True),
        "pruned": bool(checkpoint.arch),
        "history": list(checkpoint.history or []),
        "source_checkpoint": Path(checkpoint_path).name,
        "source_sha256": source_sha256,
    }


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
    proto.producer_name = "graft-edge"
    from graft_edge import __version__

    proto.producer_version = __version__
    tmp = path.with_name(f".{path.name}.meta.tmp")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def check_metadata(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate the keys a runtime needs; GraftError naming the first missing or malformed one."""
    if meta.get("format") != FORMAT:
        raise GraftError(f"{where} carries no graft-edge metadata (export it with `graft-edge export`)")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise GraftError(f"{where}: metadata lacks {missing[0]!r} (re-export it with `graft-edge export`)")
    try:
        mods = [str(m) for m in meta["modalities"]]
        size = [int(v) for v in meta["img_size"]]
        mean = [float(v) for v in meta["mean"]]
        std = [float(v) for v in meta["std"]]
        dim = int(meta["embed_dim"])
    except (TypeError, ValueError) as exc:
        raise GraftError(f"{where}: malformed metadata ({exc})") from None
    if not mods or len(size) != 2 or len(mean) != 3 or len(std) != 3 or dim < 1:
        raise GraftError(f"{where}: malformed metadata (modalities {mods}, img_size {size}, mean {mean}, std {std})")
    return dict(meta)


def embedder_info(meta: Mapping[str, Any], path: str | Path, fmt: str, extra: Mapping[str, Any] | None = None):
    """An EmbedderInfo from export metadata (what OnnxEmbedder / TensorRTEmbedder expose)."""
    from graft_edge.runtime.base import EmbedderInfo

    meta = check_metadata(meta, str(path))
    skip = {"format", "format_version", "modalities", "img_size", "mean", "std", "embed_dim",
            "params_embedding", "params_nonzero", "input_layout", "output", "artefact"}
    info_extra = {k: v for k, v in meta.items() if k not in skip}
    info_extra.update(extra or {})
    return EmbedderInfo(
        format=fmt, path=str(path), modalities=tuple(meta["modalities"]),
        img_size=(int(meta["img_size"][0]), int(meta["img_size"][1])),
        mean=tuple(float(v) for v in meta["mean"]), std=tuple(float(v) for v in meta["std"]),
        embed_dim=int(meta["embed_dim"]),
        params_embedding=int(meta.get("params_embedding", 0)), params_nonzero=int(meta.get("params_nonzero", 0)),
        extra=info_extra,
    )
