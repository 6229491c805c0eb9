"""A gallery index on disk: embed a camera's images once with any artefact, search them later with FAISS.

INDEX/ holds index.json (the model's identity, the FAISS layout, the parts), one folder per `build` or
`add` (part-000, part-001, ...: plan.json lists its images in order, batch-NNNNN.npy the embeddings of
each finished batch, embeddings.npy once the part is done) and faiss.index over every finished part.
Batches are written atomically as they finish, so an interrupted build resumes where it stopped. The
model is identified by the SHA-256 of its file: another model's embeddings are not comparable, and a
search or add with one is refused.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Subset

from graft_edge.artefact.embedder import Embedder
from graft_edge.data.dataset import ReidDataset
from graft_edge.data.transforms import PairedTransform
from graft_edge.errors import GraftError
from graft_edge.fileio import atomic_write, sha256_file, write_json
from graft_edge.retrieval.images import find_images, sample_from_json, sample_key, sample_to_json
from graft_edge.retrieval.rerank import rerank_features

MANIFEST = "index.json"
FAISS_FILE = "faiss.index"
FORMAT = "graft-edge-index"
VERSION = 1
Progress = Callable[[int], None]


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built: FAISS factory string (Flat: exact inner product), images per batch, dataset split."""
    faiss: str = "Flat"
    batch_size: int = 64
    split: str = "gallery"


def model_identity(path: str | Path, embedder: Embedder) -> dict[str, Any]:
    """What an index records about its model: file, SHA-256, format and embedding geometry."""
    info = embedder.info
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path), "format": info.format,
            "embed_dim": int(info.embed_dim), "modalities": list(info.modalities)}


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """INDEX/index.json; GraftError naming the folder when it is not an index."""
    path = Path(index_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError("not a graft-edge index")
        return manifest
    except FileNotFoundError:
        raise GraftError(f"{index_dir} is not an index: {path} is missing "
                         "(make one with `graft-edge index build`)") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise GraftError(f"{path} is not a valid index manifest ({exc})") from None


def check_model(manifest: dict[str, Any], identity: dict[str, Any], index_dir: str | Path) -> None:
    """Refuse a model other than the one the index was built with, in one line."""
    built = manifest["model"]
    if built["sha256"] != identity["sha256"]:
        raise GraftError(
            f"index {index_dir} was built with {built['path']} (sha256 {built['sha256'][:12]}), not "
            f"{identity['path']} (sha256 {identity['sha256'][:12]}): embeddings of different models are not "
            "comparable; search with the index's model or build a new index"
        )


def _loader(samples: Sequence, embedder: Embedder, indices: list[int], batch_size: int) -> Any:
    """Eval-preprocessed batches of samples[indices], in order."""


    info = embedder.info
    transform = PairedTransform(tuple(info.img_size), tuple(info.mean), tuple(info.std), train=False)
    dataset = ReidDataset(samples, info.modalities, transform)
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)


def _embed_batch(embedder: Embedder, images: dict) -> np.ndarray:
    """One batch of {modality: tensor} through the embedder: float32 (B, D)."""
    return np.asarray(embedder.embed({m: images[m].numpy() for m in embedder.info.modalities}), dtype=np.float32)


def embed_samples(embedder: Embedder, samples: Sequence, batch_size: int = 64,
                  progress: Progress | None = None) -> np.ndarray:
    """L2-normalised embeddings (N, D) of samples, batch by batch."""
    feats = []
    for images, _, _ in _loader(samples, embedder, list(range(len(samples))), batch_size):
        feats.append(_embed_batch(embedder, images))
        if progress is not None:
            progress(len(feats[-1]))
    out = np.concatenate(feats)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _embed_part(part: Path, embedder: Embedder, progress: Progress | None) -> tuple[np.ndarray, int]:
    """Embed a part's planned images batch by batch, skipping batches on disk: ((N, D) float32, images skipped)."""
    plan = json.loads((part / "plan.json").read_text())
    samples, bs = [sample_from_json(d) for d in plan["images"]], int(plan["batch_size"])
    batches = [list(range(s, min(s + bs, len(samples)))) for s in range(0, len(samples), bs)]
    todo = [b for b in range(len(batches)) if not (part / f"batch-{b:05d}.npy").is_file()]
    resumed = len(samples) - sum(len(batches[b]) for b in todo)
    if progress is not None:
        progress(resumed)
    if todo:
        loader = _loader(samples, embedder, [i for b in todo for i in batches[b]], bs)
        for b, (images, _, _) in zip(todo, loader):
            feats = _embed_batch(embedder, images)
            _save_npy(part / f"batch-{b:05d}.npy", feats)
            if progress is not None:
                progress(len(feats))
    feats = np.concatenate([np.load(part / f"batch-{b:05d}.npy") for b in range(len(batches))])
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12), resumed


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Atomically write one array (np.save would append .npy to the temp name)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


def _finish_part(index_dir: Path, manifest: dict[str, Any], part_no: int, feats: np.ndarray) -> None:
    """Store a part's embeddings, add them to the FAISS index and mark the part done."""
    part = index_dir / manifest["parts"][part_no]["dir"]
    _save_npy(part / "embeddings.npy", feats)
    _add_to_faiss(index_dir, manifest, feats)
    manifest["parts"][part_no]["complete"] = True
    manifest["count"] = sum(p["count"] for p in manifest["parts"] if p["complete"])
    write_json(index_dir / MANIFEST, manifest)
    for f in part.glob("batch-*.npy"):
        f.unlink()


def _add_to_faiss(index_dir: Path, manifest: dict[str, Any], feats: np.ndarray) -> None:
    """Add vectors to INDEX/faiss.index, creating (and for IVF/PQ training) it on the first part."""
    import faiss

    path = index_dir / FAISS_FILE
    if path.is_file() and manifest.get("faiss_count", 0) > 0:
        index = faiss.read_index(str(path))
        if index.ntotal != manifest["faiss_count"]:  # a crash after the FAISS write: re-add the finished parts
            index.reset()
            index.add(load_embeddings(index_dir, manifest))
    else:
        try:
            index = faiss.index_factory(feats.shape[1], manifest["faiss"], faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise GraftError(f"--faiss {manifest['faiss']!r} is not a FAISS factory string "
                             f"({str(exc).strip().splitlines()[-1][:200]})") from None
        if not index.is_trained:
            try:
                index.train(feats)
            except RuntimeError as exc:
                raise GraftError(f"cannot train FAISS {manifest['faiss']!r} on {len(feats)} images "
                                 f"({str(exc).strip().splitlines()[-1][:200]}); use fewer lists or Flat") from None
    index.add(feats)
    atomic_write(path, lambda p: faiss.write_index(index, str(p)))
    manifest["faiss_count"] = int(index.ntotal)


def _start_part(index_dir: Path, manifest: dict[str, Any], samples: Sequence, source: str, batch_size: int) -> int:
    """Plan a new part (its images in order) and record it, unfinished, in the manifest."""
    part_no = len(manifest["parts"])
    name = f"part-{part_no:03d}"
    write_json(index_dir / name / "plan.json",
               {"source": source, "batch_size": batch_size, "images": [sample_to_json(s) for s in samples]})
    manifest["parts"].append({"dir": name, "source": source, "count": len(samples), "complete": False})
    write_json(index_dir / MANIFEST, manifest)
    return part_no


def build_index(model_path: str | Path, embedder: Embedder, images: str | Path, index_dir: str | Path,
                options: IndexOptions = IndexOptions(), progress: Progress | None = None,
                total: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Embed IMAGES into a new index at index_dir, or finish an interrupted build of the same model there."""
    index_dir = Path(index_dir)
    identity = model_identity(model_path, embedder)
    if (index_dir / MANIFEST).is_file():
        manifest = read_manifest(index_dir)
        check_model(manifest, identity, index_dir)
        if manifest["parts"][0]["source"] != str(Path(images).resolve()):
            raise GraftError(f"index {index_dir} was started from {manifest['parts'][0]['source']}, not {images}: "
                             "rerun with those images, or use `index add`")
        return _resume_last(index_dir, manifest, embedder, progress, total)
    if index_dir.exists() and any(index_dir.iterdir()):
        raise GraftError(f"--out {index_dir} exists and is not an index: choose a new folder")
    samples = find_images(images, embedder.info.modalities, options.split)
    manifest = {"format": FORMAT, "version": VERSION, "model": identity, "faiss": options.faiss,
                "split": options.split, "parts": [], "count": 0, "faiss_count": 0}
    _start_part(index_dir, manifest, samples, str(Path(images).resolve()), options.batch_size)
    return _resume_last(index_dir, manifest, embedder, progress, total)


def _resume_last(index_dir: Path, manifest: dict[str, Any], embedder: Embedder, progress: Progress | None,
                 total: Callable[[int], None] | None) -> dict[str, Any]:
    """Finish the last part when it is unfinished; the manifest either way."""
    part = manifest["parts"][-1]
    if not part["complete"]:
        if total is not None:
            total(part["count"])
        feats, resumed = _embed_part(index_dir / part["dir"], embedder, progress)
        part["resumed"] = resumed  # images embedded by an earlier, interrupted run
        _finish_part(index_dir, manifest, len(manifest["parts"]) - 1, feats)
    return manifest


def add_to_index(model_path: str | Path, embedder: Embedder, images: str | Path, index_dir: str | Path,
                 batch_size: int = 64, progress: Progress | None = None,
                 total: Callable[[int], None] | None = None) -> tuple[dict[str, Any], int]:
    """Embed the images of IMAGES not yet in the index and add them; (manifest, number added)."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    check_model(manifest, model_identity(model_path, embedder), index_dir)
    last = manifest["parts"][-1]
    source = str(Path(images).resolve())
    if not last["complete"]:
        if last["source"] != source:
            raise GraftError(f"index {index_dir} has an unfinished part from {last['source']}: "
                             "rerun the command that started it first")
        return _resume_last(index_dir, manifest, embedder, progress, total), last["count"]
    known = {sample_key(s) for s in load_entries(index_dir, manifest)}
    new = [s for s in find_images(images, embedder.info.modalities, manifest["split"]) if sample_key(s) not in known]
    if not new:
        return manifest, 0
    _start_part(index_dir, manifest, new, source, batch_size)
    return _resume_last(index_dir, manifest, embedder, progress, total), len(new)


def load_entries(index_dir: str | Path, manifest: dict[str, Any]) -> list:
    """The indexed images (Samples) of every finished part, in index order."""
    out = []
    for part in manifest["parts"]:
        if part["complete"]:
            plan = json.loads((Path(index_dir) / part["dir"] / "plan.json").read_text())
            out.extend(sample_from_json(d) for d in plan["images"])
    return out


def load_embeddings(index_dir: str | Path, manifest: dict[str, Any]) -> np.ndarray:
    """The stored (N, D) L2-normalised embeddings of every finished part, in index order."""
    parts = [np.load(Path(index_dir) / p["dir"] / "embeddings.npy") for p in manifest["parts"] if p["complete"]]
    if not parts:
        raise GraftError(f"index {index_dir} holds no finished part: rerun `graft-edge index build`")
    return np.concatenate(parts)


@dataclass(frozen=True)
class SearchResult:
    """Per query, the indices into the index's entries (Q, K) and their distances (Q, K), nearest first."""
    indices: np.ndarray
    distances: np.ndarray


def search_index(index_dir: str | Path, manifest: dict[str, Any], queries: np.ndarray, top: int,
                 rerank_cfg: Any = None, pool: int = 1000, nprobe: int = 16) -> SearchResult:
    """Nearest gallery entries of each query embedding: FAISS inner product, reported as Euclidean distances.

    With rerank_cfg, each query's FAISS top-`pool` candidates (their union over queries) are re-ranked by
    k-reciprocal encoding among themselves; with pool >= the gallery size this is the exact re-ranking.
    """
    import faiss


    index = faiss.read_index(str(Path(index_dir) / FAISS_FILE))
    if hasattr(index, "nprobe") or "IVF" in manifest["faiss"]:
        faiss.extract_index_ivf(index).nprobe = nprobe
    q = np.ascontiguousarray(queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12), np.float32)
    n = int(index.ntotal)
    if rerank_cfg is None:
        sims, idx = index.search(q, min(top, n))
        return SearchResult(idx, np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None)))
    _, cand = index.search(q, min(max(pool, top), n))
    cand = np.unique(cand[cand >= 0])
    gallery = load_embeddings(index_dir, manifest)[cand]
    dist = rerank_features(q, gallery, rerank_cfg.k1, rerank_cfg.k2, rerank_cfg.lambda_value)
    order = np.argsort(dist, axis=1, kind="stable")[:, :min(top, len(cand))]
    return SearchResult(cand[order], np.take_along_axis(dist, order, axis=1))
