"""The one evaluation path: features of any Embedder over query/gallery loaders, then mAP and CMC (and, on
request, the same after k-reciprocal re-ranking).

`eval`, `bench`, the frontier, training's model selection and pruning's finetuning all call it, so a
number means the same thing wherever it is printed.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from graft_edge.artefact import Embedder, EmbedderInfo
from graft_edge.config import GraftConfig, ModelConfig
from graft_edge.data import build_eval_loaders, build_val_loaders
from graft_edge.errors import GraftError, one_line
from graft_edge.finite import check_features
from graft_edge.metrics import RerankConfig, evaluate_rank, pairwise_distance, rerank_features
from graft_edge.model.embedder import ModelEmbedder


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


def extract_features(embedder: Embedder, loader: Iterable, progress: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the embedder over a loader of (images, ids, cams): features (N, D), ids (N,), cams (N,)."""
    split = split_features(embedder, loader, progress)
    return split.feats, split.ids, split.cams


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
