"""Random model inputs: the one generator behind parity checks, timing, tracing and FLOP counts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from graft_edge.errors import GraftError


def random_images(modalities: Sequence[str], img_size: Sequence[int], batch: int,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Normalised-image-like inputs: standard normal {modality: float32 (batch, 3, H, W)}, deterministic per seed."""
    if batch < 1:
        raise GraftError(f"batch {batch}: expected a positive integer")
    rng = np.random.default_rng(seed)
    h, w = int(img_size[0]), int(img_size[1])
    return {m: rng.standard_normal((batch, 3, h, w), dtype=np.float32) for m in modalities}
