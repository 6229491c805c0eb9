"""Paired augmentation: one draw of resize/pad-crop/flip/erase parameters applied to every modality.

The modalities of one sample are pixel-aligned views of the same instant, so they must be
augmented together: the same flips, the same crop and the same erased rectangle. Randomness
comes from torch's global RNG (no seed argument): DataLoader seeds it per worker, so runs are
reproducible through torch.manual_seed / the loader's generator.
Random erasing writes 0 AFTER normalisation, i.e. the dataset mean colour (no new statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from PIL import Image

from graft_edge.data.dataset import to_tensor
from graft_edge.errors import GraftError


@dataclass(frozen=True)
class AugParams:
    """One draw of augmentation parameters, shared by all modalities of a sample."""

    hflip: bool = False
    vflip: bool = False
    crop: tuple[int, int] | None = None  # (top, left) into the padded image; None: no pad-crop
    erase: tuple[int, int, int, int] | None = None  # (top, left, height, width); None: no erasing


class PairedTransform:
    """{modality: PIL image} -> {modality: normalised (3, H, W)}, identical random params per sample."""

    def __init__(
        self,
        img_size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        train: bool,
        hflip: float = 0.5,
        vflip: float = 0.5,
        erase: float = 0.5,
        pad: int = 0,
        erase_scale: tuple[float, float] = (0.02, 0.33),
        erase_ratio: tuple[float, float] = (0.3, 3.3),
    ) -> None:
        self.img_size = (int(img_size[0]), int(img_size[1]))  # (H, W)
        if min(self.img_size) < 1:
            raise GraftError(f"model.img_size={tuple(img_size)} must be positive (H, W)")
        for name, p in (("hflip", hflip), ("vflip", vflip), ("erase", erase)):
            if not 0.0 <= p <= 1.0:
                raise GraftError(f"data.{name}={p} is a probability: expected a value in [0, 1]")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise GraftError(f"mean {tuple(mean)} / std {tuple(std)}: expected 3 values each, std > 0")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.train = train
        self.hflip, self.vflip, self.erase, self.pad = hflip, vflip, erase, max(0, int(pad))
        self.erase_scale, self.erase_ratio = erase_scale, erase_ratio

    def __repr__(self) -> str:
        mode = f"train, hflip={self.hflip}, vflip={self.vflip}, erase={self.erase}, pad={self.pad}" if self.train else "eval"
        return f"PairedTransform(img_size={self.img_size}, {mode})"

    def _draw_erase(self) -> tuple[int, int, int, int] | None:
        """A random rectangle as in Zhong et al. 2020 (area and log-aspect ranges), or None."""
        H, W = self.img_size
        lo, hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        for _ in range(10):
            area = H * W * float(torch.empty(1).uniform_(*self.erase_scale))
            aspect = math.exp(float(torch.empty(1).uniform_(lo, hi)))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < h < H and 0 < w < W:
                top = int(torch.randint(0, H - h + 1, (1,)))
                left = int(torch.randint(0, W - w + 1, (1,)))
                return top, left, h, w
        return None

    def draw(self) -> AugParams:
        """Draw one set of parameters from torch's global RNG (eval: none)."""
        if not self.train:
            return AugParams()
        hflip = bool(torch.rand(1) < self.hflip)
        vflip = bool(torch.rand(1) < self.vflip)
        crop = None
        if self.pad:
            crop = (int(torch.randint(0, 2 * self.pad + 1, (1,))), int(torch.randint(0, 2 * self.pad + 1, (1,))))
        erase = self._draw_erase() if bool(torch.rand(1) < self.erase) else None
        return AugParams(hflip, vflip, crop, erase)

    def apply_one(self, img: Image.Image, params: AugParams) -> torch.Tensor:
        """One modality: resize, pad-crop, flip, normalise, erase -> (3, H, W)."""
        H, W = self.img_size
        if img.size != (W, H):
            img = img.resize((W, H), Image.BILINEAR)
        x = to_tensor(img)  # (3, H, W) in [0, 1]
        if params.crop is not None:
            p, (top, left) = self.pad, params.crop
            x = torch.nn.functional.pad(x, (p, p, p, p))[:, top : top + H, left : left + W]
        if params.hflip:
            x = x.flip(-1)
        if params.vflip:
            x = x.flip(-2)
        x = (x - self.mean) / self.std
        if params.erase is not None:
            top, left, h, w = params.erase
            x[:, top : top + h, left : left + w] = 0.0  # mean colour after normalisation
        return x

    def apply(self, images: Mapping[str, Image.Image], params: AugParams) -> dict[str, torch.Tensor]:
        """All modalities with the same parameters."""
        return {m: self.apply_one(img, params) for m, img in images.items()}

    def __call__(self, images: Mapping[str, Image.Image]) -> dict[str, torch.Tensor]:
        return self.apply(images, self.draw())
