"""Real images for INT8 calibration and parity checks, read through graft_edge.data.

Calibration uses the TRAIN split (never the query/gallery images the model is evaluated on),
parity checks use the gallery split (held out from calibration). Samples are taken evenly spaced
over the sorted file list, so every identity/camera range is represented and runs are
reproducible. Images are preprocessed exactly as evaluation does (resize, normalise).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from graft_edge.data.dataset import ReidDataset
from graft_edge.data.layouts import detect_layout, read_split
from graft_edge.data.transforms import PairedTransform
from graft_edge.errors import GraftError

MIN_CALIB_SAMPLES = 16  # fewer images than this give unreliable activation ranges
DEFAULT_CALIB_SAMPLES = 256
PARITY_SAMPLES = 16  # real images used to measure parity / cosines
CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIB_METHOD = "minmax"


def check_calib_root(root: str | Path, modalities: Sequence[str], calibrate: bool) -> int:
    """Images in ROOT's train split, when it has every modality the model needs and, to `calibrate`,
    at least MIN_CALIB_SAMPLES of them; GraftError otherwise."""
    layout = detect_layout(root)
    missing = [m for m in modalities if m not in layout.modalities]
    if missing:
        raise GraftError(
            f"--calib-data {root} holds modalities {','.join(layout.modalities)} but the model needs "
            f"{','.join(modalities)} (missing {','.join(missing)})"
        )
    available = len(read_split(root, "train", modalities))
    if calibrate and available < MIN_CALIB_SAMPLES:
        raise GraftError(f"--calib-data {root}: its train split has {available} image(s); static INT8 calibration "
                         f"needs at least {MIN_CALIB_SAMPLES}")
    return available


def _evenly(n_total: int, n: int) -> list[int]:
    """n indices spread evenly over range(n_total) (all of them when n >= n_total)."""
    if n >= n_total:
        return list(range(n_total))
    return sorted({int(round(i)) for i in np.linspace(0, n_total - 1, n)})


def load_split_images(root: str | Path, split: str, modalities: Sequence[str], img_size: Sequence[int],
                      mean: Sequence[float], std: Sequence[float], n: int) -> dict[str, np.ndarray]:
    """Up to n preprocessed samples of one split: {modality: float32 (n, 3, H, W)}."""
    samples = read_split(root, split, modalities)
    if not samples:
        raise GraftError(f"--calib-data {root}: the {split} split holds no images")
    picked = [samples[i] for i in _evenly(len(samples), n)]
    transform = PairedTransform(tuple(img_size), tuple(mean), tuple(std), train=False)
    dataset = ReidDataset(picked, modalities, transform=transform)
    items = [dataset[i][0] for i in range(len(dataset))]
    return {m: torch.stack([it[m] for it in items]).numpy().astype(np.float32, copy=False) for m in modalities}


def load_calibration(root: str | Path, modalities: Sequence[str], img_size: Sequence[int], mean: Sequence[float],
                     std: Sequence[float], n: int = DEFAULT_CALIB_SAMPLES) -> dict[str, np.ndarray]:
    """Up to n calibration samples from the train split (checked first by `check_calib_root`)."""
    return load_split_images(root, "train", modalities, img_size, mean, std, n)


def load_parity_images(root: str | Path, modalities: Sequence[str], img_size: Sequence[int], mean: Sequence[float],
                       std: Sequence[float], n: int = PARITY_SAMPLES) -> dict[str, np.ndarray]:
    """Held-out real samples for parity: the gallery split, or the train split when there is no gallery."""
    try:
        return load_split_images(root, "gallery", modalities, img_size, mean, std, n)
    except GraftError:
        return load_split_images(root, "train", modalities, img_size, mean, std, n)
