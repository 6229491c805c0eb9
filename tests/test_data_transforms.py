"""PairedTransform: one draw of flips / crop / erasing shared by every modality; eval is deterministic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from graft_edge.data.transforms import AugParams, PairedTransform
from graft_edge.errors import GraftError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _gradient(seed: int) -> Image.Image:
    """A 16x32 image with structure in both directions (flips change it)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8))


def test_same_params_for_every_modality() -> None:
    t = PairedTransform((8, 16), MEAN, STD, train=True, hflip=0.5, vflip=0.5, erase=0.5, pad=2)
    img = _gradient(0)
    torch.manual_seed(0)
    for _ in range(30):
        out = t({"rgb": img, "nir": img.copy(), "tir": img.copy()})
        assert out["rgb"].shape == (3, 8, 16)
        assert torch.equal(out["rgb"], out["nir"]) and torch.equal(out["rgb"], out["tir"])


def test_flips_and_erase_really_applied() -> None:
    imgs = {"rgb": _gradient(1), "nir": _gradient(2)}
    base = PairedTransform((8, 16), MEAN, STD, train=False)(imgs)
    flipped = PairedTransform((8, 16), MEAN, STD, train=True, hflip=1.0, vflip=1.0, erase=0.0)(imgs)
    for m in imgs:
        assert torch.equal(flipped[m], base[m].flip(-1).flip(-2))
    t = PairedTransform((8, 16), MEAN, STD, train=True, hflip=0.0, vflip=0.0, erase=1.0)
    torch.manual_seed(1)
    params = t.draw()
    assert params.erase is not None and not params.hflip and not params.vflip
    out = t.apply(imgs, params)
    top, left, h, w = params.erase
    for m in imgs:
        region = out[m][:, top : top + h, left : left + w]
        assert region.numel() > 0 and torch.all(region == 0)  # mean colour after normalisation
        keep = torch.ones(8, 16, dtype=torch.bool)
        keep[top : top + h, left : left + w] = False
        assert torch.equal(out[m][:, keep], base[m][:, keep])


def test_params_vary_between_samples() -> None:
    t = PairedTransform((8, 16), MEAN, STD, train=True, pad=2)
    torch.manual_seed(0)
    draws = {t.draw() for _ in range(40)}
    assert len(draws) > 10
    assert {d.hflip for d in draws} == {True, False} and {d.erase is None for d in draws} == {True, False}


def test_eval_resize_and_normalise_only() -> None:
    t = PairedTransform((4, 6), MEAN, STD, train=False)
    img = Image.new("RGB", (12, 8), (255, 128, 0))
    a, b = t({"rgb": img}), t({"rgb": img})
    assert torch.equal(a["rgb"], b["rgb"]) and a["rgb"].shape == (3, 4, 6)
    expected = (torch.tensor([255, 128, 0]) / 255.0 - 0.5) / 0.25
    assert torch.allclose(a["rgb"].mean(dim=(1, 2)), expected, atol=1e-5)
    assert t.draw() == AugParams()


@pytest.mark.parametrize("kwargs, match", [
    ({"hflip": 1.5}, r"data\.hflip=1\.5"),
    ({"erase": -0.1}, r"data\.erase=-0\.1"),
    ({"img_size": (0, 8)}, "img_size"),
    ({"std": (0.0, 1.0, 1.0)}, "std"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"img_size": (8, 16), "mean": MEAN, "std": STD, "train": True, **kwargs}
    with pytest.raises(GraftError, match=match):
        PairedTransform(**args)
