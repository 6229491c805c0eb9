"""A gallery index on disk: embed a camera's images once with any artefact, search them later with FAISS.

INDEX/ holds index.json (the model's identity, the FAISS layout, the parts), one folder per `build` or
`add` (part-000, part-001, ...: plan.json lists its images in order, batch-NNNNN.npy the embeddings of
each finished batch, embeddings.npy once the part is done) and faiss.index over every finished part
(the files and their checked reads: `retrieval.store`). A build or add is a writer like any other: it
holds the folder's lock, checks its options before it writes anything, and stages its part: batches are
written atomically as they finish, so an interrupted run resumes where it stopped; a rerun re-plans an
unfinished part from its images as they are now (keeping the finished batches that still hold the same
images), and an add from another folder drops it. The model is identified by the SHA-256 of its file:
another model's embeddings are not comparable, and a search or add with one is refused.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Subset

from graft_edge.artefact.embedder import Embedder
from graft_edge.data.dataset import ReidDataset
from graft_edge.data.layouts import SPLITS
from graft_edge.data.transforms import PairedTransform
from graft_edge.errors import GraftError
from graft_edge.fileio import atomic_write, sha256_file, write_json
from graft_edge.outdir import OutputLock, clean_stale_temps, is_empty, remove_entry
from graft_edge.retrieval.images import find_images, sample_key, sample_to_json
from graft_edge.retrieval.rerank import rerank_features
from graft_edge.retrieval.store import (
    EMBEDDINGS,
    FAISS_FILE,
    FORMAT,
    MANIFEST,
    PLAN,
    VERSION,
    IndexView,
    check_parts,
    load_embeddings,
    load_entries,
    read_array,
    read_faiss,
    read_manifest,
    read_plan,
)

Progress = Callable[[int], None]
Log = Callable[[str], None]
TEMPS = (".*.tmp", "part-*/.*.tmp")  # atomic writes a killed run left behind


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built: FAISS factory string (Flat: exact inner product), images per batch, dataset split."""
    faiss: str = "Flat"
    batch_size: int = 64
    split: str = "gallery"

    def validated(self) -> IndexOptions:
        """This, checked (GraftError naming the option); the FAISS string is checked against the data by check_faiss."""
        if not self.faiss.strip():
            raise GraftError("--faiss '': expected a FAISS factory string such as Flat or IVF1024,PQ32")
        if self.batch_size < 1:
            raise GraftError(f"--batch-size {self.batch_size}: expected a positive integer")
        if self.split not in SPLITS:
            raise GraftError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")
        return IndexOptions(self.faiss.strip(), self.batch_size, self.split)


def model_identity(path: str | Path, embedder: Embedder) -> dict[str, Any]:
    """What an index records about its model: file, SHA-256, format and embedding geometry."""
    info = embedder.info
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path), "format": info.format,
            "embed_dim": int(info.embed_dim), "modalities": list(info.modalities)}


def check_model(manifest: dict[str, Any], identity: dict[str, Any], index_dir: str | Path) -> None:
    """Refuse a model other than the one the index was built with, in one line."""
    built = manifest["model"]
    if built["sha256"] != identity["sha256"]:
        raise GraftError(
            f"index {index_dir} was built with {built['path']} (sha256 {built['sha256'][:12]}), not "
            f"{identity['path']} (sha256 {identity['sha256'][:12]}): embeddings of different models are not "
            "comparable; search with the index's model or build a new index"
        )


# ------------------------------------------------------------------------------------------ embedding

def _loader(samples: Sequence, embedder: Embedder, indices: list[int], batch_size: int) -> Any:
    """Eval-preprocessed batches of samples[indices], in order."""
    info = embedder.info
    transform = PairedTransform(tuple(info.img_size), tuple(info.mean), tuple(info.std), train=False)
    dataset = ReidDataset(samples, info.modalities, transform)
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)


def _embed_batch(embedder: Embedder, images: dict) -> np.ndarray:
    """One batch of {modality: tensor} through the embedder: float32 (B, D)."""
    return np.asarray(embedder.embed({m: images[m].numpy() for m in embedder.info.modalities}), dtype=np.float32)


def _normalised(feats: np.ndarray) -> np.ndarray:
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def embed_samples(embedder: Embedder, samples: Sequence, batch_size: int = 64,
                  progress: Progress | None = None) -> np.ndarray:
    """L2-normalised embeddings (N, D) of samples, batch by batch."""
    feats = []
    for images, _, _ in _loader(samples, embedder, list(range(len(samples))), batch_size):
        feats.append(_embed_batch(embedder, images))
        if progress is not None:
            progress(len(feats[-1]))
    return _normalised(np.concatenate(feats))


def _batches(count: int, bs: int) -> list[list[int]]:
    return [list(range(s, min(s + bs, count))) for s in range(0, count, bs)]


def _embed_part(index_dir: Path, part: dict[str, Any], embedder: Embedder,
                progress: Progress | None) -> tuple[np.ndarray, int]:
    """Embed a part's planned images batch by batch, keeping whole batches on disk: ((N, D) float32, images kept)."""
    folder, dim = index_dir / part["dir"], int(embedder.info.embed_dim)
    samples, bs = read_plan(index_dir, part)
    batches = _batches(len(samples), bs)
    stored: dict[int, np.ndarray] = {}
    for b, idx in enumerate(batches):
        path = folder / f"batch-{b:05d}.npy"
        if path.is_file():
            try:
                stored[b] = np.array(read_array(path, len(idx), dim))
            except GraftError:
                path.unlink()  # damaged: embedded again
    todo = [b for b in range(len(batches)) if b not in stored]
    resumed = len(samples) - sum(len(batches[b]) for b in todo)
    if progress is not None:
        progress(resumed)
    if todo:
        loader = _loader(samples, embedder, [i for b in todo for i in batches[b]], bs)
        for b, (images, _, _) in zip(todo, loader):
            stored[b] = _embed_batch(embedder, images)
            _save_npy(folder / f"batch-{b:05d}.npy", stored[b])
            if progress is not None:
                progress(len(stored[b]))
    return _normalised(np.concatenate([stored[b] for b in range(len(batches))])), resumed


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Atomically write one array (np.save would append .npy to the temp name)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)

    atomic_write(path, write)


# ------------------------------------------------------------------------------------------ FAISS

def _factory(spec: str, dim: int) -> Any:
    """An empty FAISS index of the factory string (inner product); GraftError when the string is not one."""
    import faiss

    try:
        return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise GraftError(f"--faiss {spec!r} is not a FAISS factory string "
                         f"({str(exc).strip().splitlines()[-1][:200]})") from None


def training_points(index: Any) -> int:
    """Fewest vectors FAISS trains `index` on: a point per k-means centroid (IVF lists, PQ codes), per PCA output."""
    import faiss

    if index.is_trained:
        return 0
    need, todo = 1, [index]
    while todo:
        idx = faiss.downcast_index(todo.pop())
        need = max(need, int(getattr(idx, "nlist", 0)))
        pq = getattr(idx, "pq", None)
        need = max(need, int(pq.ksub) if pq is not None else 0)
        if isinstance(idx, faiss.IndexPreTransform):
            for i in range(idx.chain.size()):
                vt = faiss.downcast_VectorTransform(idx.chain.at(i))
                need = max(need, int(vt.d_out) if isinstance(vt, faiss.PCAMatrix) else 0,
                           256 if isinstance(vt, faiss.OPQMatrix) else 0)
            todo.append(idx.index)
    return need


def check_faiss(spec: str, dim: int, count: int) -> None:
    """Before any work: the FAISS string parses, and `count` images are enough to train it."""
    need = training_points(_factory(spec, dim))
    if count < need:
        raise GraftError(f"cannot train FAISS {spec!r} on {count} images: it needs at least {need}; use fewer "
                         "lists or Flat")


def _new_faiss(spec: str, feats: np.ndarray) -> Any:
    """A FAISS index of the factory string, trained on feats when it needs training (nothing added yet)."""
    index = _factory(spec, feats.shape[1])
    if not index.is_trained:
        try:
            index.train(feats)
        except RuntimeError as exc:
            raise GraftError(f"cannot train FAISS {spec!r} on {len(feats)} images "
                             f"({str(exc).strip().splitlines()[-1][:200]}); rerun with fewer lists or Flat "
                             "(the embeddings are kept)") from None
    return index


def _write_faiss(index_dir: Path, manifest: dict[str, Any], index: Any) -> None:
    import faiss

    atomic_write(index_dir / FAISS_FILE, lambda p: faiss.write_index(index, str(p)))
    manifest["faiss_count"] = int(index.ntotal)


def _sync_faiss(index_dir: Path, manifest: dict[str, Any]) -> None:
    """With the lock: faiss.index holds exactly the finished parts; rebuilt from their embeddings when it is missing,
    damaged or out of step (a run killed between its FAISS and manifest writes)."""
    if manifest["count"] == 0:
        return
    try:
        index = read_faiss(index_dir)
        if int(index.ntotal) == manifest["count"]:
            return
        index.reset()  # keeps its training
    except GraftError:
        index = None
    feats = load_embeddings(index_dir, manifest)
    index = index if index is not None else _new_faiss(manifest["faiss"], feats)
    index.add(feats)
    _write_faiss(index_dir, manifest, index)


def _finish_part(index_dir: Path, manifest: dict[str, Any], feats: np.ndarray) -> None:
    """Store the last part's embeddings, add them to the FAISS index and mark the part done."""
    part = manifest["parts"][-1]
    index = read_faiss(index_dir) if manifest["count"] else _new_faiss(manifest["faiss"], feats)
    _save_npy(index_dir / part["dir"] / EMBEDDINGS, feats)
    index.add(feats)
    _write_faiss(index_dir, manifest, index)
    part["complete"] = True
    manifest["count"] = sum(p["count"] for p in manifest["parts"] if p["complete"])
    write_json(index_dir / MANIFEST, manifest)
    for f in (index_dir / part["dir"]).glob("batch-*.npy"):
        f.unlink()


# ------------------------------------------------------------------------------------------ staged parts

def _start_part(index_dir: Path, manifest: dict[str, Any], samples: Sequence, source: str, batch_size: int) -> None:
    """Plan a new part (its images in order) and record it, unfinished, in the manifest."""
    name = f"part-{len(manifest['parts']):03d}"
    if (index_dir / name).exists():
        remove_entry(index_dir / name)  # left by a run killed before its manifest named it
    write_json(index_dir / name / PLAN,
               {"source": source, "batch_size": batch_size, "images": [sample_to_json(s) for s in samples]})
    manifest["parts"].append({"dir": name, "source": source, "count": len(samples), "complete": False})
    write_json(index_dir / MANIFEST, manifest)


def _replan(index_dir: Path, manifest: dict[str, Any], samples: Sequence, batch_size: int) -> None:
    """The unfinished last part, planned again from `samples`: its batches that hold the same images are kept."""
    part = manifest["parts"][-1]
    try:
        old, bs = read_plan(index_dir, part)
    except GraftError:  # a damaged plan: nothing of it is kept
        old, bs = [], batch_size
    old_json, new_json = [sample_to_json(s) for s in old], [sample_to_json(s) for s in samples]
    for path in (index_dir / part["dir"]).glob("batch-*.npy"):
        b = int(path.stem[6:]) if path.stem[6:].isdigit() else -1
        lo, hi = b * bs, (b + 1) * bs
        if b < 0 or not old_json[lo:hi] or old_json[lo:hi] != new_json[lo:hi]:
            path.unlink()
    write_json(index_dir / part["dir"] / PLAN, {"source": part["source"], "batch_size": bs, "images": new_json})
    part["count"] = len(samples)
    write_json(index_dir / MANIFEST, manifest)


def _drop_last(index_dir: Path, manifest: dict[str, Any], log: Log) -> None:
    """Remove the unfinished last part (none of its images is in the index yet)."""
    part = manifest["parts"].pop()
    write_json(index_dir / MANIFEST, manifest)
    remove_entry(index_dir / part["dir"])
    log(f"dropped the unfinished part from {part['source']} ({part['count']} images, never added to the index); "
        "add that folder again to index it")


def _stage_part(index_dir: Path, manifest: dict[str, Any], samples: Sequence, source: str, batch_size: int,
                log: Log) -> None:
    """The part this run fills: an unfinished part of the same images folder is re-planned, one of another dropped."""
    parts = manifest["parts"]
    if parts and not parts[-1]["complete"]:
        if parts[-1]["source"] == source:
            _replan(index_dir, manifest, samples, batch_size)
            return
        _drop_last(index_dir, manifest, log)
    _start_part(index_dir, manifest, samples, source, batch_size)


def _fill_last(index_dir: Path, manifest: dict[str, Any], embedder: Embedder, progress: Progress | None,
               total: Callable[[int], None] | None) -> dict[str, Any]:
    """Embed and finish the (unfinished) last part; the manifest."""
    part = manifest["parts"][-1]
    if total is not None:
        total(part["count"])
    feats, resumed = _embed_part(index_dir, part, embedder, progress)
    part["resumed"] = resumed  # images embedded by an earlier, interrupted run
    _finish_part(index_dir, manifest, feats)
    return manifest


# ------------------------------------------------------------------------------------------ build / add

def _new_manifest(identity: dict[str, Any], options: IndexOptions) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": identity, "faiss": options.faiss, "split": options.split,
            "parts": [], "count": 0, "faiss_count": 0}


def _existing_build(index_dir: Path, identity: dict[str, Any], source: str, images: str | Path,
                    options: IndexOptions) -> tuple[dict[str, Any], bool]:
    """With the lock: the manifest of a build in index_dir (new when there is none) and whether it is finished."""
    if not (index_dir / MANIFEST).is_file():
        if not is_empty(index_dir):
            raise GraftError(f"--out {index_dir} exists and is not an index: choose a new folder")
        return _new_manifest(identity, options), False
    manifest = read_manifest(index_dir)
    check_model(manifest, identity, index_dir)
    first = manifest["parts"][0] if manifest["parts"] else None
    if first is not None and first["source"] != source:
        raise GraftError(f"index {index_dir} was started from {first['source']}, not {images}: "
                         "rerun with those images, or use `index add`")
    if first is None or not first["complete"]:  # nothing is in FAISS yet: this run's options apply
        return {**manifest, "faiss": options.faiss, "split": options.split}, False
    for key in ("faiss", "split"):
        if manifest[key] != getattr(options, key):
            raise GraftError(f"index {index_dir} was built with --{key} {manifest[key]}, not {getattr(options, key)}: "
                             "build a new index in another folder")
    return manifest, True


def build_index(model_path: str | Path, embedder: Embedder, images: str | Path, index_dir: str | Path,
                options: IndexOptions = IndexOptions(), progress: Progress | None = None,
                total: Callable[[int], None] | None = None, log: Log = lambda _: None) -> dict[str, Any]:
    """Embed IMAGES into a new index at index_dir, or finish an interrupted build of the same model there."""
    index_dir, options = Path(index_dir), options.validated()
    if index_dir.exists() and not index_dir.is_dir():
        raise GraftError(f"--out {index_dir} is a file: expected a folder for the index")
    identity = model_identity(model_path, embedder)
    source = str(Path(images).resolve())
    samples = find_images(images, embedder.info.modalities, options.split)
    check_faiss(options.faiss, identity["embed_dim"], len(samples))
    with OutputLock(index_dir, "index build"):
        clean_stale_temps(index_dir, TEMPS)
        manifest, finished = _existing_build(index_dir, identity, source, images, options)
        if finished:
            check_parts(index_dir, manifest)
            _sync_faiss(index_dir, manifest)
            return manifest
        _stage_part(index_dir, manifest, samples, source, options.batch_size, log)
        return _fill_last(index_dir, manifest, embedder, progress, total)


def add_to_index(model_path: str | Path, embedder: Embedder, images: str | Path, index_dir: str | Path,
                 batch_size: int = 64, progress: Progress | None = None,
                 total: Callable[[int], None] | None = None, log: Log = lambda _: None) -> tuple[dict[str, Any], int]:
    """Embed the images of IMAGES not yet in the index and add them; (manifest, number added)."""
    index_dir = Path(index_dir)
    if batch_size < 1:
        raise GraftError(f"--batch-size {batch_size}: expected a positive integer")
    read_manifest(index_dir)  # an index already (the lock would create a folder)
    identity = model_identity(model_path, embedder)
    source = str(Path(images).resolve())
    with OutputLock(index_dir, "index add"):
        clean_stale_temps(index_dir, TEMPS)
        manifest = read_manifest(index_dir)
        check_model(manifest, identity, index_dir)
        check_parts(index_dir, manifest)
        _sync_faiss(index_dir, manifest)
        known = {sample_key(s) for s in load_entries(index_dir, manifest)}
        new = [s for s in find_images(images, embedder.info.modalities, manifest["split"])
               if sample_key(s) not in known]
        last = manifest["parts"][-1] if manifest["parts"] else None
        if not new:
            if last is not None and not last["complete"] and last["source"] == source:
                _drop_last(index_dir, manifest, log)  # all of it is indexed by now
            return manifest, 0
        _stage_part(index_dir, manifest, new, source, batch_size, log)
        return _fill_last(index_dir, manifest, embedder, progress, total), len(new)


# ------------------------------------------------------------------------------------------ search

@dataclass(frozen=True)
class SearchResult:
    """Per query, the indices into the index's entries (Q, K) and their distances (Q, K), nearest first."""
    indices: np.ndarray
    distances: np.ndarray


def search_index(view: IndexView, queries: np.ndarray, top: int, rerank_cfg: Any = None, pool: int = 1000,
                 nprobe: int = 16) -> SearchResult:
    """Nearest gallery entries of each query embedding: FAISS inner product, reported as Euclidean distances.

    `view` is a consistent read of the index (`retrieval.store.open_index`). With rerank_cfg, each query's FAISS
    top-`pool` candidates (their union over queries) are re-ranked by k-reciprocal encoding among themselves; with
    pool >= the gallery size this is the exact re-ranking.
    """
    import faiss

    index = view.faiss
    if hasattr(index, "nprobe") or "IVF" in view.manifest["faiss"]:
        faiss.extract_index_ivf(index).nprobe = nprobe
    q = np.ascontiguousarray(_normalised(queries), np.float32)
    n = int(index.ntotal)
    if rerank_cfg is None:
        sims, idx = index.search(q, min(top, n))
        return SearchResult(idx, np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None)))
    _, cand = index.search(q, min(max(pool, top), n))
    cand = np.unique(cand[cand >= 0])
    gallery = view.embeddings()[cand]
    dist = rerank_features(q, gallery, rerank_cfg.k1, rerank_cfg.k2, rerank_cfg.lambda_value)
    order = np.argsort(dist, axis=1, kind="stable")[:, :min(top, len(cand))]
    return SearchResult(cand[order], np.take_along_axis(dist, order, axis=1))

