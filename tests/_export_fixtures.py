"""Shared fixtures of the export tests: tiny checkpoints and a tiny side-by-side dataset (imported by test_export*.py)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

TINY_ARGS = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def make_checkpoint(path: Path, modalities: tuple[str, ...], seed: int = 0, history=None) -> Path:
    """A tiny synthetic-preset GraFT (2 blocks, width 32, 32x64 input) saved as a checkpoint."""
    import torch

    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.config import get_preset
    from graft_edge.model import build_model

    cfg = get_preset("synthetic")
    cfg = replace(cfg, model=replace(cfg.model, modalities=modalities, pretrained=False, backbone_args=TINY_ARGS,
                                     enc_heads=2, enc_ff=64))
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # a trained BNNeck is not the identity: make the exported path exercise it
        model.head.bn.running_mean.normal_(0, 0.1)
        model.head.bn.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(path, model, cfg, history=history)


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory):
    cache: dict = {}

    def make(modalities: tuple[str, ...], history=None) -> Path:
        key = (modalities, json.dumps(history))
        if key not in cache:
            path = tmp_path_factory.mktemp("ckpt") / f"{'-'.join(modalities)}.pt"
            cache[key] = make_checkpoint(path, modalities, history=history)
        return cache[key]

    return make


def write_dataset(root: Path, modalities: tuple[str, ...], n_train: int = 24, n_gallery: int = 8, n_query: int = 4,
                  slot=(64, 32)) -> Path:
    """A side-by-side dataset (ROOT/rgbir/...) of random-ish images, one slot per modality."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for _split, folder, n in (("train", "bounding_box_train", n_train), ("gallery", "bounding_box_test", n_gallery),
                             ("query", "query", n_query)):
        d = root / "rgbir" / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pid = i % 4 + 1
            base = rng.integers(0, 255, size=(1, 1, 3))
            noise = rng.integers(0, 60, size=(slot[1], slot[0] * len(modalities), 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"{pid:04d}_c{(i % 3) + 1:04d}_{i:03d}.jpg", quality=90)
    (root / "graft_dataset.json").write_text(json.dumps({"modalities": list(modalities), "layout": "side_by_side"}))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", ("rgb", "nir", "tir"))
