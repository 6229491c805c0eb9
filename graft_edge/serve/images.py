"""Encoded images -> the normalised float tensors an artefact takes, with the artefact's own preprocessing.

Two request forms: one side-by-side image holding every trained modality in equal-width slots (the
RGBNT100 file layout, slots in the artefact's modality order), or one image per modality. Decoding
and normalisation are the evaluation pipeline's (`data.transforms.PairedTransform`, train=False), so
an image sent to the server gives the embedding `graft-edge eval` computes for the same file.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from graft_edge.artefact.embedder import EmbedderInfo
from graft_edge.data.transforms import PairedTransform
from graft_edge.errors import GraftError

MAX_IMAGE_PIXELS = 64_000_000  # a decompression bomb is refused, not decoded


def decode(data: bytes, what: str) -> Image.Image:
    """Encoded bytes (JPEG, PNG, ...) -> PIL RGB image; GraftError naming `what` when they do not decode."""
    if not data:
        raise GraftError(f"{what} is empty (expected encoded image bytes: JPEG, PNG, ...)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                raise GraftError(f"{what} is {img.size[0]}x{img.size[1]}: over {MAX_IMAGE_PIXELS} pixels")
            img.load()
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise GraftError(f"{what} does not decode as an image ({type(exc).__name__}: {str(exc)[:120]})") from None


def split_slots(img: Image.Image, modalities: Sequence[str], what: str) -> dict[str, Image.Image]:
    """A side-by-side image -> {modality: its slot}; GraftError when the width does not split evenly."""
    n = len(modalities)
    width, height = img.size
    if width % n or width < n:
        raise GraftError(f"{what} is {width}x{height}: its width does not split into {n} equal slots "
                         f"({','.join(modalities)})")
    w = width // n
    return {m: img.crop((i * w, 0, (i + 1) * w, height)) for i, m in enumerate(modalities)}


class ImagePreprocessor:
    """Decodes and normalises request images exactly as evaluation does, for one artefact."""

    def __init__(self, info: EmbedderInfo) -> None:
        self.modalities = tuple(info.modalities)
        self.transform = PairedTransform(tuple(info.img_size), tuple(info.mean), tuple(info.std), train=False)
        self._params = self.transform.draw()  # eval mode: no flip, crop or erase

    def tensors(self, images: dict[str, Image.Image]) -> dict[str, np.ndarray]:
        """{modality: PIL image} -> {modality: float32 (3, H, W)}."""
        return {m: t.numpy() for m, t in self.transform.apply(images, self._params).items()}

    def side_by_side(self, data: bytes, what: str = "input 'image'") -> dict[str, np.ndarray]:
        """One side-by-side encoded image -> {modality: (3, H, W)} for every trained modality."""
        return self.tensors(split_slots(decode(data, what), self.modalities, what))

    def per_modality(self, encoded: dict[str, bytes]) -> dict[str, np.ndarray]:
        """{modality: encoded bytes} -> {modality: (3, H, W)}."""
        return self.tensors({m: decode(b, f"input '{m}_image'") for m, b in encoded.items()})
