"""The robustness table: accuracy for every non-empty subset of the sensors, and the worst subset.

An operator reads it to know what losing a sensor costs. Each split is read once: every batch is embedded for
every subset together (`embed_subsets`: a checkpoint of a fusion-token GraFT runs its backbone once and averages
each subset's fusion tokens; any other embedder runs once per subset, e.g. an exported graph with its presence
mask), then each subset is scored like a single `eval --modalities SUBSET`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graft_edge.artefact import Embedder
from graft_edge.config import modality_subsets
from graft_edge.data import build_eval_loaders
from graft_edge.evaluation import SplitFeatures, model_config_of, score_splits
from graft_edge.finite import check_features
from graft_edge.metrics import RerankConfig

Subset = tuple[str, ...]
ALL_SUBSETS = "all"  # --modalities all (eval, bench): every non-empty subset


def subset_label(subset: Sequence[str]) -> str:
    """('rgb', 'nir') -> 'rgb+nir' (how tables and the worst-subset column name a subset)."""
    return "+".join(subset)


def embed_subsets(embedder: Embedder, batch: dict[str, np.ndarray], subsets: Sequence[Subset]) -> dict[Subset, np.ndarray]:
    """{subset: (B, D) embeddings} of one batch of every modality: the embedder's own `embed_subsets` where it has
    one (one backbone pass for all subsets), else one `embed` per subset with the other modalities left out."""
    own = getattr(embedder, "embed_subsets", None)
    if callable(own):
        return own(batch, subsets)
    return {s: np.asarray(embedder.embed({m: batch[m] for m in s}), dtype=np.float32) for s in subsets}


def subset_features(embedder: Embedder, loader: Iterable, subsets: Sequence[Subset],
                    progress: Any = None) -> dict[Subset, SplitFeatures]:
    """One split's features for every subset (one pass over the loader), with ids, cameras and samples."""
    feats: dict[Subset, list[np.ndarray]] = {s: [] for s in subsets}
    ids, cams = [], []
    for images, pids, camids in loader:
        batch = {m: images[m].numpy() for m in embedder.info.modalities if m in images}
        for s, f in embed_subsets(embedder, batch, subsets).items():
            feats[s].append(np.asarray(f, dtype=np.float32))
        ids.append(np.asarray(pids))
        cams.append(np.asarray(camids))
        if progress is not None:
            progress(len(pids))
    samples = list(getattr(getattr(loader, "dataset", None), "samples", []))
    out = {}
    for s in subsets:
        features = np.concatenate(feats[s])
        check_features(features, f"{embedder.info.path or embedder.info.format} ({subset_label(s)})")
        out[s] = SplitFeatures(features, np.concatenate(ids), np.concatenate(cams), samples)
    return out


def worst_subset(rows: Sequence[dict[str, Any]], key: str = "mAP") -> dict[str, Any] | None:
    """The row with the lowest `key` (the first of equals, smallest subsets first); None without rows."""
    scored = [r for r in rows if r.get(key) is not None]
    return min(scored, key=lambda r: r[key]) if scored else None


NEEDS_EVERY_SENSOR = "needs every sensor (no presence-mask input)"  # worst_error of an artefact without subsets


def worst_columns(result: dict[str, Any]) -> dict[str, Any]:
    """An `evaluate_subsets` result as the frontier's record: worst_mAP and worst_subset ('rgb+nir') in place of
    `worst`, the per-subset rows kept under `subsets`."""
    out = {k: v for k, v in result.items() if k != "worst"}
    return {**out, "worst_mAP": result["worst"]["mAP"], "worst_subset": subset_label(result["worst"]["modalities"])}


def evaluate_subsets(embedder: Embedder, data_root: str | Path, batch_size: int = 64, num_workers: int = 0,
                     progress: Any = None, rerank_cfg: RerankConfig | None = None,
                     subsets: Sequence[Subset] | None = None) -> dict[str, Any]:
    """The robustness table of an embedder on ROOT's query/gallery splits.

    Returns the every-sensor metrics at the top level (as `evaluate_embedder` would), `subsets`: one record per
    subset ({"modalities": [...], "mAP", "R1", "R5", "R10", counts, ["rerank"]}), and `worst`: the subset with the
    lowest mAP ({"modalities", "mAP", "R1"}).
    """
    mods = tuple(embedder.info.modalities)
    subsets = [tuple(s) for s in (subsets or modality_subsets(mods))]
    query, gallery = build_eval_loaders(data_root, model_config_of(embedder.info), batch_size=batch_size,
                                        num_workers=num_workers)
    q = subset_features(embedder, query, subsets, progress)
    g = subset_features(embedder, gallery, subsets, progress)
    rows = [{"modalities": list(s), **score_splits(q[s], g[s], rerank_cfg)} for s in subsets]
    full = next((r for r in rows if tuple(r["modalities"]) == mods), rows[-1])
    worst = worst_subset(rows)
    return {**{k: v for k, v in full.items() if k != "modalities"}, "subsets": rows,
            "worst": {"modalities": worst["modalities"], "mAP": worst["mAP"], "R1": worst["R1"]}}
