"""The one evaluation path: features of any Embedder over query/gallery loaders, then mAP and CMC (and, on
request, the same after k-reciprocal re-ranking).

`eval`, `bench`, the frontier, training's model selection and pruning's finetuning all call it, so a
number means the same thing wherever it is printed. `evaluate_subsets` is the robustness table: the same numbers
for every non-empty subset of the sensors, and the worst one.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from graft_edge.artefact.embedder import Embedder, EmbedderInfo
from graft_edge.config import GraftConfig, ModelConfig, modality_subsets
from graft_edge.data import build_eval_loaders, build_val_loaders
from graft_edge.errors import GraftError, one_line
from graft_edge.finite import check_features
from graft_edge.model.embedder import ModelEmbedder
from graft_edge.retrieval.metrics import RerankConfig, evaluate_rank, pairwise_distance, rerank_features

METRIC_KEYS = ("mAP", "R1", "R5", "R10")  # what every evaluation reports (and prefixes val_ on validation)


class SplitFeatures(NamedTuple):
    """One split's embeddings (N, D), ids (N,), cameras (N,) and the samples they came from, in order."""

    feats: np.ndarray
    ids: np.ndarray
    cams: np.ndarray
    samples: list


def model_config_of(info: EmbedderInfo) -> ModelConfig:
    """The preprocessing-relevant part of a ModelConfig rebuilt from an embedder's metadata."""
    return replace(ModelConfig(), modalities=tuple(info.modalities), img_size=tuple(info.img_size),
                   mean=tuple(info.mean), std=tuple(info.std), pretrained=False)


def features_of_many(embedders: Mapping[str, Embedder], loader: Iterable,
                     progress: Any = None) -> dict[str, SplitFeatures | Exception]:
    """One pass over a loader of (images, ids, cams), every batch (decoded once) fed to every embedder: each one's
    SplitFeatures, or the exception it raised (it is dropped for the rest of the pass; the others go on)."""
    samples = list(getattr(getattr(loader, "dataset", None), "samples", []))
    feats: dict[str, list[np.ndarray]] = {k: [] for k in embedders}
    failed: dict[str, Exception] = {}
    ids, cams = [], []
    for images, pids, camids in loader:
        for key, embedder in embedders.items():
            if key in failed:
                continue
            try:
                batch = {m: images[m].numpy() for m in embedder.info.modalities if m in images}
                feats[key].append(np.asarray(embedder.embed(batch), dtype=np.float32))
            except Exception as exc:  # noqa: BLE001 - reported per artefact by the caller
                failed[key] = exc
        ids.append(np.asarray(pids))
        cams.append(np.asarray(camids))
        if progress is not None:
            progress(len(pids))
    out: dict[str, SplitFeatures | Exception] = dict(failed)
    for key, embedder in embedders.items():
        if key in failed:
            continue
        features = np.concatenate(feats[key])
        try:
            check_features(features, embedder.info.path or embedder.info.format)
        except GraftError as exc:
            out[key] = exc
            continue
        out[key] = SplitFeatures(features, np.concatenate(ids), np.concatenate(cams), samples)
    return out


def split_features(embedder: Embedder, loader: Iterable, progress: Any = None) -> SplitFeatures:
    """One split's features, ids, cameras and samples (from the loader's dataset, when it has them)."""
    result = features_of_many({"": embedder}, loader, progress)[""]
    if isinstance(result, Exception):
        raise result
    return result


def evaluate_loaders(embedder: Embedder, query_loader: Iterable, gallery_loader: Iterable, progress: Any = None,
                     rerank_cfg: RerankConfig | None = None) -> dict[str, Any]:
    """mAP, R1/R5/R10 (fractions) and counts of an embedder on query/gallery loaders (+ re-ranked ones)."""
    return score_splits(split_features(embedder, query_loader, progress),
                        split_features(embedder, gallery_loader, progress), rerank_cfg)


def embed_splits(embedder: Embedder, data_root: str | Path, batch_size: int = 64, num_workers: int = 0,
                 progress: Any = None) -> tuple[SplitFeatures, SplitFeatures]:
    """Embed ROOT's query and gallery splits with the embedder's own preprocessing."""
    query, gallery = build_eval_loaders(data_root, model_config_of(embedder.info), batch_size=batch_size,
                                        num_workers=num_workers)
    return split_features(embedder, query, progress), split_features(embedder, gallery, progress)


def query_gallery_distances(query: SplitFeatures, gallery: SplitFeatures,
                            rerank_cfg: RerankConfig | None = None) -> np.ndarray:
    """Plain Euclidean distances (Q, G), or their k-reciprocal re-ranking when rerank_cfg is given.

    Re-ranking works from the features (`rerank_features`: the same result as `rerank` on the three
    distance blocks, without holding the G x G matrix).
    """
    if rerank_cfg is None:
        return pairwise_distance(query.feats, gallery.feats)
    return rerank_features(query.feats, gallery.feats, rerank_cfg.k1, rerank_cfg.k2, rerank_cfg.lambda_value)


def score_splits(query: SplitFeatures, gallery: SplitFeatures, rerank_cfg: RerankConfig | None = None,
                 reranked: np.ndarray | None = None) -> dict[str, Any]:
    """mAP, R1/R5/R10 and counts; with rerank_cfg also the re-ranked ones under "rerank".

    `reranked` passes re-ranked distances already computed with rerank_cfg (they are not recomputed).
    """
    dist = pairwise_distance(query.feats, gallery.feats)
    result = evaluate_rank(dist, query.ids, gallery.ids, query.cams, gallery.cams)
    out: dict[str, Any] = {**result.summary(), "num_query": len(query.ids), "num_gallery": len(gallery.ids),
                           "num_query_skipped": int(result.num_skipped)}
    if rerank_cfg is not None:
        if reranked is None:
            reranked = query_gallery_distances(query, gallery, rerank_cfg)
        rr = evaluate_rank(reranked, query.ids, gallery.ids, query.cams, gallery.cams)
        out["rerank"] = {**rr.summary(), "k1": rerank_cfg.k1, "k2": rerank_cfg.k2,
                         "lambda": rerank_cfg.lambda_value}
    return out


def evaluate_embedder(embedder: Embedder, data_root: str | Path, batch_size: int = 64,
                      num_workers: int = 0, progress: Any = None,
                      rerank_cfg: RerankConfig | None = None) -> dict[str, Any]:
    """mAP, R1/R5/R10 (fractions) and counts for an embedder on ROOT's query/gallery splits (+ re-ranked ones)."""
    query, gallery = embed_splits(embedder, data_root, batch_size, num_workers, progress)
    return score_splits(query, gallery, rerank_cfg)


def evaluate_model(model: torch.nn.Module, query_loader: Iterable, gallery_loader: Iterable) -> dict[str, Any]:
    """`evaluate_loaders` of a live model (on its own device) in eval mode; its train/eval modes are restored."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        return evaluate_loaders(ModelEmbedder(model), query_loader, gallery_loader)
    finally:
        for name, m in model.named_modules():
            m.training = modes[name]


def with_prefix(metrics: dict[str, Any], prefix: str = "val_") -> dict[str, Any]:
    """The same metrics with `prefix` on every key (val_mAP, val_R1, ...): validation beside test in one record."""
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def evaluate_val(embedder: Embedder, data_root: str | Path, cfg: GraftConfig, batch_size: int | None = None,
                 progress: Any = None) -> dict[str, Any]:
    """val_mAP, val_R1/R5/R10 and counts on ROOT's validation split (the training ids `cfg.data` holds out),
    with the embedder's own preprocessing; {} when cfg.data.val_fraction is 0."""
    data = replace(cfg.data, eval_batch_size=batch_size) if batch_size else cfg.data
    loaders = build_val_loaders(data_root, replace(cfg, model=model_config_of(embedder.info), data=data), 0)
    if loaders is None:
        return {}
    return with_prefix(evaluate_loaders(embedder, *loaders, progress))


def _preprocessing(info: EmbedderInfo) -> tuple:
    m = model_config_of(info)
    return (m.modalities, m.img_size, m.mean, m.std)


def evaluate_embedders(embedders: Mapping[str, Embedder], data_root: str | Path, cfg: GraftConfig | None = None,
                       batch_size: int = 64, progress: Any = None,
                       rerank_cfg: RerankConfig | None = None) -> dict[str, dict[str, Any] | Exception]:
    """`evaluate_embedder` (+ `evaluate_val` when `cfg` has a validation split) of several artefacts, reading and
    decoding every image once per group of artefacts with the same preprocessing (the formats of one model).

    Each value is the metrics of one artefact, or the exception its evaluation raised (the others are unaffected);
    a validation split that cannot be built gives every artefact `val_error` instead of the val_* metrics.
    """
    groups: dict[tuple, dict[str, Embedder]] = {}
    for key, emb in embedders.items():
        groups.setdefault(_preprocessing(emb.info), {})[key] = emb
    out: dict[str, dict[str, Any] | Exception] = {}
    for group in groups.values():
        mcfg = model_config_of(next(iter(group.values())).info)
        query, gallery = (features_of_many(group, loader, progress)
                          for loader in build_eval_loaders(data_root, mcfg, batch_size=batch_size))
        for key in group:
            bad = next((f for f in (query[key], gallery[key]) if isinstance(f, Exception)), None)
            out[key] = bad if bad is not None else score_splits(query[key], gallery[key], rerank_cfg)
        ok = {k: group[k] for k in group if not isinstance(out[k], Exception)}
        if cfg is None or cfg.data.val_fraction <= 0 or not ok:
            continue
        try:
            loaders = build_val_loaders(data_root, replace(cfg, model=mcfg, data=replace(cfg.data,
                                                                                     eval_batch_size=batch_size)), 0)
        except GraftError as exc:
            for key in ok:
                out[key]["val_error"] = one_line(exc)
            continue
        if loaders is None:
            continue
        vq, vg = (features_of_many(ok, loader, progress) for loader in loaders)
        for key in ok:
            bad = next((f for f in (vq[key], vg[key]) if isinstance(f, Exception)), None)
            out[key] = bad if bad is not None else {**out[key], **with_prefix(score_splits(vq[key], vg[key]))}
    return out


def evaluate_test_and_val(embedder: Embedder, data_root: str | Path, cfg: GraftConfig) -> dict[str, Any]:
    """Test (query/gallery: mAP, R1, ...) and validation (val_mAP, ...) metrics side by side, at cfg's eval batch."""
    return {**evaluate_embedder(embedder, data_root, batch_size=cfg.data.eval_batch_size),
            **evaluate_val(embedder, data_root, cfg)}


def score_line(metrics: Mapping[str, Any], keys: Sequence[str] = METRIC_KEYS) -> str:
    """'val mAP .. R1 .. | test mAP .. R1 ..' (percent; each part only when its split was evaluated)."""
    def fmt(prefix: str) -> str:
        return "  ".join(f"{k} {100 * metrics[prefix + k]:.2f}" for k in keys if metrics.get(prefix + k) is not None)

    parts = [f"{name} {fmt(prefix)}" for name, prefix in (("val", "val_"), ("test", ""))
             if metrics.get(prefix + "mAP") is not None]
    return " | ".join(parts)


# ---------------------------------------------------------------- the robustness table: every subset of the sensors
# An operator reads it to know what losing a sensor costs. Each split is read once: every batch is embedded for
# every subset together (`embed_subsets`: a checkpoint of a fusion-token GraFT runs its backbone once and averages
# each subset's fusion tokens; any other embedder runs once per subset, e.g. an exported graph with its presence
# mask), then each subset is scored like a single `eval --modalities SUBSET`.

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
