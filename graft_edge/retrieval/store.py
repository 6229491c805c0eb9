"""The gallery index's files, read with checks: index.json, each part's plan.json and embeddings.npy, faiss.index.

A truncated, hand-edited or half-copied file is a GraftError naming it, never a traceback. Writers
(`index build` / `add`) hold the folder's lock; a reader (`index search`) takes none and reads a
consistent snapshot instead: the manifest, FAISS, the manifest again, until they agree (finished parts
never change, so a snapshot's parts stay valid while a writer adds the next one).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft_edge.data.layouts import Sample
from graft_edge.errors import GraftError
from graft_edge.retrieval.images import sample_from_json

MANIFEST = "index.json"
FAISS_FILE = "faiss.index"
PLAN = "plan.json"
EMBEDDINGS = "embeddings.npy"
FORMAT = "graft-edge-index"
VERSION = 1
PART_NAME = re.compile(r"part-\d{3,}")
_MODEL_FIELDS = {"path": str, "sha256": str, "embed_dim": int, "modalities": list}
_MANIFEST_FIELDS = {"model": dict, "faiss": str, "split": str, "parts": list, "count": int}
_PART_FIELDS = {"dir": str, "source": str, "count": int, "complete": bool}


def _check_fields(obj: dict[str, Any], fields: dict[str, type], where: str, path: Path) -> None:
    """GraftError naming the file and the first missing or mistyped field."""
    for key, kind in fields.items():
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise GraftError(f"{path} is not a valid index manifest ({where}{key!r} is missing or not a "
                             f"{kind.__name__}): rebuild the index")


def _check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """The manifest's structure: model identity, FAISS string, split, parts (names, counts, states)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GraftError(f"{path} is not a valid index manifest (not a graft-edge index)")
    _check_fields(manifest, _MANIFEST_FIELDS, "", path)
    _check_fields(manifest["model"], _MODEL_FIELDS, "model.", path)
    for i, part in enumerate(manifest["parts"]):
        if not isinstance(part, dict):
            raise GraftError(f"{path} is not a valid index manifest (parts[{i}] is not a mapping): rebuild the index")
        _check_fields(part, _PART_FIELDS, f"parts[{i}].", path)
        if not PART_NAME.fullmatch(part["dir"]) or part["count"] < 0:
            raise GraftError(f"{path} is not a valid index manifest (parts[{i}]: dir {part['dir']!r}, count "
                             f"{part['count']}): rebuild the index")
    if any(not p["complete"] for p in manifest["parts"][:-1]):
        raise GraftError(f"{path} is not a valid index manifest (an unfinished part before the last): rebuild the index")
    finished = sum(p["count"] for p in manifest["parts"] if p["complete"])
    if manifest["count"] != finished or manifest.get("faiss_count", 0) != finished:
        raise GraftError(f"{path} is not a valid index manifest (count {manifest['count']}, FAISS count "
                         f"{manifest.get('faiss_count')}, finished parts {finished}): rebuild the index")
    return manifest


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """INDEX/index.json, checked; GraftError naming the folder when it is not an index, or the file when damaged."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if index_dir.exists() and not index_dir.is_dir():
        raise GraftError(f"{index_dir} is a file, not an index folder (make one with `graft-edge index build`)")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GraftError(f"{index_dir} is not an index: {path} is missing "
                         "(make one with `graft-edge index build`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GraftError(f"{path} cannot be read ({exc})") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise GraftError(f"{path} is not a valid index manifest ({exc}): rebuild the index") from None
    return _check_manifest(manifest, path)


def read_plan(index_dir: str | Path, part: dict[str, Any]) -> tuple[list[Sample], int]:
    """A part's planned images, in order, and its batch size; GraftError naming plan.json when damaged."""
    path = Path(index_dir) / part["dir"] / PLAN
    try:
        plan = json.loads(path.read_text())
        batch_size, images = plan["batch_size"], plan["images"]
        if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(images, list):
            raise ValueError("batch_size or images of the wrong type")
        samples = [sample_from_json(d) for d in images]
    except FileNotFoundError:
        raise GraftError(f"{path} is missing: rebuild the index") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GraftError(f"{path} is not a valid part plan ({type(exc).__name__}: {exc}): rebuild the index") from None
    if len(samples) != part["count"]:
        raise GraftError(f"{path} lists {len(samples)} images, the manifest {part['count']}: rebuild the index")
    return samples, batch_size


def read_array(path: Path, rows: int, dim: int) -> np.ndarray:
    """A stored (rows, dim) float32 array, memory-mapped; GraftError naming the file when its shape or size is off."""
    try:
        arr = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise GraftError(f"{path} is missing: rebuild the index") from None
    except (OSError, ValueError) as exc:
        raise GraftError(f"{path} is damaged ({str(exc).splitlines()[0][:120]}): rebuild the index") from None
    if arr.shape != (rows, dim) or arr.dtype != np.float32:
        raise GraftError(f"{path} holds {arr.dtype} {tuple(arr.shape)}, expected float32 ({rows}, {dim}): "
                         "rebuild the index")
    return arr


def load_entries(index_dir: str | Path, manifest: dict[str, Any]) -> list[Sample]:
    """The indexed images (Samples) of every finished part, in index order."""
    out: list[Sample] = []
    for part in manifest["parts"]:
        if part["complete"]:
            out.extend(read_plan(index_dir, part)[0])
    return out


def load_embeddings(index_dir: str | Path, manifest: dict[str, Any]) -> np.ndarray:
    """The stored (N, D) L2-normalised embeddings of every finished part, in index order."""
    dim = manifest["model"]["embed_dim"]
    parts = [np.asarray(read_array(Path(index_dir) / p["dir"] / EMBEDDINGS, p["count"], dim))
             for p in manifest["parts"] if p["complete"]]
    if not parts:
        raise GraftError(f"index {index_dir} holds no finished part: rerun `graft-edge index build`")
    return np.concatenate(parts)


def check_parts(index_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every finished part's plan and embeddings file is whole (headers and sizes; nothing is loaded)."""
    dim = manifest["model"]["embed_dim"]
    for part in manifest["parts"]:
        if part["complete"]:
            read_plan(index_dir, part)
            read_array(Path(index_dir) / part["dir"] / EMBEDDINGS, part["count"], dim)


def read_faiss(index_dir: str | Path) -> Any:
    """INDEX/faiss.index; GraftError naming it when it is missing or unreadable."""
    import faiss

    path = Path(index_dir) / FAISS_FILE
    if not path.is_file():
        raise GraftError(f"{path} is missing: rerun `graft-edge index build` with its first arguments to rebuild it")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise GraftError(f"{path} is damaged ({str(exc).strip().splitlines()[-1][:120]}): rerun "
                         "`graft-edge index build` with its first arguments to rebuild it") from None


@dataclass(frozen=True)
class IndexView:
    """A consistent read of an index: its manifest and the FAISS index over exactly its finished parts."""

    root: Path
    manifest: dict[str, Any]
    faiss: Any

    def entries(self) -> list[Sample]:
        """The indexed images, in FAISS order."""
        return load_entries(self.root, self.manifest)

    def embeddings(self) -> np.ndarray:
        """The stored embeddings, in FAISS order."""
        return load_embeddings(self.root, self.manifest)


def open_index(index_dir: str | Path, attempts: int = 10) -> IndexView:
    """A consistent snapshot of INDEX, without its lock: retried while a writer is between its FAISS and manifest
    writes; GraftError when the files disagree for good."""
    index_dir = Path(index_dir)
    for attempt in range(attempts):
        manifest = read_manifest(index_dir)
        if not any(p["complete"] for p in manifest["parts"]):
            raise GraftError(f"index {index_dir} holds no finished part: rerun `graft-edge index build`")
        index = read_faiss(index_dir)
        if read_manifest(index_dir) == manifest and int(index.ntotal) == manifest["count"]:
            if int(index.d) != manifest["model"]["embed_dim"]:
                raise GraftError(f"{index_dir / FAISS_FILE} holds {index.d}-d vectors, the index's model gives "
                                 f"{manifest['model']['embed_dim']}-d: rebuild the index")
            check_parts(index_dir, manifest)
            return IndexView(index_dir, manifest, index)
        time.sleep(0.02 * (attempt + 1))  # a writer is between its FAISS and manifest writes
    raise GraftError(f"{index_dir / FAISS_FILE} holds {index.ntotal} vectors but {index_dir / MANIFEST} counts "
                     f"{manifest['count']}: rerun `graft-edge index build` with its first arguments to rebuild it")
