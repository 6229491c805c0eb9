"""ReidDataset: multimodal samples -> ({modality: (3, H, W)}, label, camid), with clear errors for bad files."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from graft_edge.data.images import decode_rgb, image_size
from graft_edge.data.layouts import Sample, Source
from graft_edge.errors import GraftError

Images = dict[str, Image.Image]
Transform = Callable[[Mapping[str, Image.Image]], Mapping[str, torch.Tensor]]
Item = tuple[dict[str, torch.Tensor], int, int]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def check_geometry(src: Source, size: tuple[int, int]) -> None:
    """A side-by-side file must split into `num_slots` equal slots by width."""
    width, height = size
    if src.slot is not None and (width % src.num_slots or width < src.num_slots):
        raise GraftError(
            f"{src.path} is {width}x{height}: its width does not split into {src.num_slots} equal modality slots "
            f"(expected a width divisible by {src.num_slots}, e.g. {src.num_slots * 256}x128)"
        )


def slot_crop(img: Image.Image, src: Source) -> Image.Image:
    """The slot of a side-by-side image holding one modality (the whole image when slot is None)."""
    check_geometry(src, img.size)
    if src.slot is None:
        return img
    w = img.size[0] // src.num_slots
    return img.crop((src.slot * w, 0, (src.slot + 1) * w, img.size[1]))


def load_images(sample: Sample, modalities: Sequence[str]) -> Images:
    """Decode a sample's modalities (each file once) -> {modality: PIL RGB image}."""
    decoded: dict[Path, Image.Image] = {}
    out: Images = {}
    for m in modalities:
        src = sample.source(m)
        if src.path not in decoded:
            decoded[src.path] = decode_rgb(src.path)
        out[m] = slot_crop(decoded[src.path], src)
    return out


class ReidDataset(Dataset):
    """Multimodal ReID images: item = ({modality: (3, H, W)}, label, camid)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        modalities: Sequence[str],
        transform: Transform | None = None,
        check: str = "first",
    ) -> None:
        self.samples = list(samples)
        self.modalities = tuple(modalities)
        self.transform = transform
        if not self.samples:
            raise GraftError("dataset is empty: no images found")
        missing = [m for m in self.modalities if m not in self.samples[0].modalities]
        if missing:
            raise GraftError(f"samples have no {missing[0]!r} images (they have {','.join(self.samples[0].modalities)})")
        if check not in ("first", "all", "none"):
            raise GraftError(f"check={check!r}: expected first, all or none")
        if check != "none":
            self.validate(self.samples if check == "all" else self.samples[:1])

    def validate(self, samples: Sequence[Sample]) -> None:
        """Eagerly check that files exist and split into their slots (headers only, no decoding)."""
        sizes: dict[Path, tuple[int, int]] = {}
        for sample in samples:
            for m in self.modalities:
                src = sample.source(m)
                if src.path not in sizes:
                    sizes[src.path] = image_size(src.path)
                check_geometry(src, sizes[src.path])

    @property
    def labels(self) -> list[int]:
        """Per-item labels (what the identity sampler groups by)."""
        return [s.label for s in self.samples]

    @property
    def camids(self) -> list[int]:
        """Per-item camera ids."""
        return [s.camid for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | tuple[int, int]) -> Item:
        """Item `index`; an (index, seed) key augments under that seed (data/seeding.py), leaving torch's RNG as it was."""
        if isinstance(index, tuple):
            index, seed = index
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._item(index)
        return self._item(index)

    def _item(self, index: int) -> Item:
        sample = self.samples[index]
        images = load_images(sample, self.modalities)
        if self.transform is None:
            tensors = {m: to_tensor(img) for m, img in images.items()}  # (3, H, W) in [0, 1]
        else:
            tensors = dict(self.transform(images))
        return tensors, sample.label, sample.camid
