"""The one place image files are decoded: any bit depth and mode to 8-bit RGB, a size limit, errors naming the file.

16-bit and float images (thermal cameras write them) are stretched from their own min..max to
0..255 instead of being clipped (Pillow's plain RGB conversion turns most 16-bit pixels white);
an image over MAX_PIXELS is refused before it is decoded (a decompression bomb).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from graft_edge.errors import GraftError

MAX_PIXELS = 64_000_000  # far above any ReID crop; a 20000 x 20000 image is refused without decoding it
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits per pixel, one channel


def _bad(path: Path, exc: BaseException) -> GraftError:
    return GraftError(f"cannot read image {path}: corrupt or not an image ({exc})")


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise GraftError(f"image {path} is too large to decode safely: {width}x{height} pixels, more than the "
                         f"{MAX_PIXELS:,} allowed (a decompression bomb, or not a ReID crop)")


def _open(path: Path) -> Image.Image:
    """Image.open with Pillow's own bomb check turned into our one-line error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError:
        raise GraftError(f"image file {path} is missing") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise GraftError(f"image {path} is too large to decode safely ({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise _bad(path, exc) from None


def stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """A wide (16-bit / 32-bit / float) single-channel array -> uint8, its own min..max mapped to 0..255."""
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def decode_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully to 8-bit RGB (wide images stretched, alpha dropped); GraftError naming the file."""
    path = Path(path)
    img = _open(path)
    try:
        with img:
            _check_pixels(path, img.size)
            img.load()
            if img.mode in WIDE_MODES:
                gray = Image.fromarray(stretch_to_uint8(np.asarray(img)), mode="L")
                return gray.convert("RGB")
            return img.convert("RGB")
    except GraftError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad(path, exc) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding; GraftError when unreadable or too large."""
    path = Path(path)
    with _open(path) as img:
        _check_pixels(path, img.size)
        return img.size
