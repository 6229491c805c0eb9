"""The one evaluation path: features of any Embedder over query/gallery loaders, then mAP and CMC.

`eval`, `bench`, the frontier, training's model selection and pruning's finetuning all call it, so a
number means the same thing wherever it is printed.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from graft_edge.artefact import Embedder, EmbedderInfo
from graft_edge.config import ModelConfig
from graft_edge.data import build_eval_loaders
from graft_edge.finite import check_features
from graft_edge.metrics import evaluate_rank, pairwise_distance
from graft_edge.model.embedder import ModelEmbedder


def model_config_of(info: EmbedderInfo) -> ModelConfig:
    """The preprocessing-relevant part of a ModelConfig rebuilt from an embedder's metadata."""
    return replace(ModelConfig(), modalities=tuple(info.modalities), img_size=tuple(info.img_size),
                   mean=tuple(info.mean), std=tuple(info.std), pretrained=False)


def extract_features(embedder: Embedder, loader: Iterable, progress: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the embedder over a loader of (images, ids, cams): features (N, D), ids (N,), cams (N,)."""
    feats, ids, cams = [], [], []
    for images, pids, camids in loader:
        batch = {m: images[m].numpy() for m in embedder.info.modalities if m in images}
        feats.append(np.asarray(embedder.embed(batch), dtype=np.float32))
        ids.append(np.asarray(pids))
        cams.append(np.asarray(camids))
        if progress is not None:
            progress(len(pids))
    features = np.concatenate(feats)
    check_features(features, embedder.info.path or embedder.info.format)
    return features, np.concatenate(ids), np.concatenate(cams)


def evaluate_loaders(embedder: Embedder, query_loader: Iterable, gallery_loader: Iterable,
                     progress: Any = None) -> dict[str, Any]:
    """mAP, R1/R5/R10 (fractions) and counts of an embedder on query/gallery loaders."""
    qf, qi, qc = extract_features(embedder, query_loader, progress)  # (Nq, D)
    gf, gi, gc = extract_features(embedder, gallery_loader, progress)  # (Ng, D)
    result = evaluate_rank(pairwise_distance(qf, gf), qi, gi, qc, gc)
    return {**result.summary(), "num_query": int(len(qi)), "num_gallery": int(len(gi)),
            "num_query_skipped": int(result.num_skipped)}


def evaluate_embedder(embedder: Embedder, data_root: str | Path, batch_size: int = 64,
                      num_workers: int = 0, progress: Any = None) -> dict[str, Any]:
    """mAP, R1/R5/R10 (fractions) and counts of an embedder on ROOT's query/gallery splits."""
    query_loader, gallery_loader = build_eval_loaders(
        data_root, model_config_of(embedder.info), batch_size=batch_size, num_workers=num_workers
    )
    return evaluate_loaders(embedder, query_loader, gallery_loader, progress)


def evaluate_model(model: torch.nn.Module, query_loader: Iterable, gallery_loader: Iterable) -> dict[str, Any]:
    """`evaluate_loaders` of a live model (on its own device) in eval mode; its train/eval modes are restored."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        return evaluate_loaders(ModelEmbedder(model), query_loader, gallery_loader)
    finally:
        for name, m in model.named_modules():
            m.training = modes[name]
