"""How hard the synthetic set is: the nuisance knobs real ReID data has, as one frozen dataclass with named presets.

`easy` is the generator's original behaviour (every knob off: its bytes are unchanged for a seed). Every knob
draws from its own random stream (keyed by seed, camera and image), so turning one on never moves the draws
of the others or of the base renderer. Per camera: illumination gain per modality, a colour (hue) rotation of
the visible view, optical blur, extra sensor noise. Per image: scale/position jitter, a partial occluder seen by
every sensor, and optionally one degraded sensor (low contrast, noisy). `min_cue_values` makes identities
differ by finer cue steps (more values per modality cue).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Sequence

import numpy as np

from graft_edge.errors import GraftError

# knob -> (lowest, highest, unit/meaning) for validation and --help
KNOBS: dict[str, tuple[float, float, str]] = {
    "min_cue_values": (4, 16, "values per modality cue at least (finer identity steps)"),
    "illumination": (0.0, 0.9, "per-camera gain spread per modality: gain in [1-x, 1+x]"),
    "hue_shift": (0.0, 180.0, "per-camera hue rotation of the RGB view, up to +-x degrees"),
    "blur": (0.0, 4.0, "per-camera optical blur, Gaussian sigma up to x pixels"),
    "noise": (0.0, 0.5, "per-camera extra sensor noise, std up to x (fraction of full scale)"),
    "occlusion": (0.0, 0.9, "partial occluder covering up to x of the image area"),
    "occlusion_prob": (0.0, 1.0, "probability that an image has the partial occluder"),
    "jitter": (0.0, 0.5, "per-image scale change up to +-x and shift up to +-x/2 of the frame"),
    "degrade_prob": (0.0, 1.0, "probability that one sensor of an image is degraded"),
    "degrade_contrast": (0.05, 1.0, "contrast left in a degraded sensor (1 = unchanged)"),
}


@dataclass(frozen=True)
class Difficulty:
    """Nuisance knobs of the synthetic generator (all off: the original set). Units in KNOBS."""

    name: str = "easy"
    min_cue_values: int = 4
    illumination: float = 0.0
    hue_shift: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    occlusion: float = 0.0
    occlusion_prob: float = 0.0
    jitter: float = 0.0
    degrade_prob: float = 0.0
    degrade_contrast: float = 0.35

    def validated(self) -> Difficulty:
        """This difficulty, or GraftError naming the first knob out of range."""
        for key, (low, high, meaning) in KNOBS.items():
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise GraftError(f"difficulty knob {key}={value!r}: expected a number in [{low}, {high}] ({meaning})")
        if self.min_cue_values != int(self.min_cue_values):
            raise GraftError(f"difficulty knob min_cue_values={self.min_cue_values!r}: expected a whole number")
        return self

    def record(self) -> dict[str, Any]:
        """The knobs as plain data (graft_dataset.json)."""
        return asdict(self)


PRESETS: dict[str, Difficulty] = {
    "easy": Difficulty(),
    # the capacity-bound benchmark (benchmarks/README.md), calibrated at 80 ids x 16 cameras x 2 images
    # per camera: finer identity steps (6 values per cue) and the original nuisance, so the `synthetic` preset's
    # tiny ViT converges within its epochs and pruning it hurts even after finetuning
    "capacity": Difficulty(name="capacity", min_cue_values=6),
    # every nuisance knob on (robustness studies); at the same sizes it learns slower: less converged, less bound
    "hard": Difficulty(name="hard", min_cue_values=6, illumination=0.15, hue_shift=5.0, blur=0.5, noise=0.02,
                       occlusion=0.2, occlusion_prob=0.15, jitter=0.06, degrade_prob=0.1, degrade_contrast=0.35),
}


def get_difficulty(name: str, overrides: Mapping[str, Any] | Sequence[str] = ()) -> Difficulty:
    """The named preset with some knobs changed ('noise=0.1' strings or a mapping); GraftError on a bad name/value."""
    if name not in PRESETS:
        raise GraftError(f"unknown difficulty {name!r}: expected one of {', '.join(PRESETS)}")
    changes = dict(overrides) if isinstance(overrides, Mapping) else _parse_overrides(overrides)
    bad = [k for k in changes if k not in KNOBS]
    if bad:
        raise GraftError(f"unknown difficulty knob {bad[0]!r}: expected one of {', '.join(KNOBS)}")
    diff = PRESETS[name]
    if changes:
        diff = replace(diff, name=f"{name}+" + ",".join(f"{k}={changes[k]}" for k in changes), **changes)
    return diff.validated()


def _parse_overrides(items: Sequence[str]) -> dict[str, float | int]:
    """['noise=0.1', 'blur=2'] -> {'noise': 0.1, 'blur': 2.0}; GraftError naming a malformed item."""
    types = {f.name: f.type for f in fields(Difficulty)}
    out: dict[str, float | int] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in KNOBS:
            raise GraftError(f"--knob {item!r}: expected KEY=VALUE with KEY one of {', '.join(KNOBS)}")
        try:
            out[key] = int(text) if types[key] in (int, "int") else float(text)
        except ValueError:
            raise GraftError(f"--knob {item!r}: {text!r} is not a number") from None
    return out


@dataclass(frozen=True)
class CameraNuisance:
    """One camera's draws of the per-camera knobs (identity transforms when the knobs are off)."""

    gains: Mapping[str, float]  # modality -> illumination gain
    hue_degrees: float  # rotation of the RGB view's colours about the grey axis
    blur_sigma: float  # pixels
    noise_sigma: float  # fraction of full scale


def camera_nuisance(diff: Difficulty, rng: np.random.Generator, modalities: Sequence[str]) -> CameraNuisance:
    """Draw one camera's nuisance (a fixed number of draws, whatever the knob values)."""
    gains = {m: float(1.0 + diff.illumination * rng.uniform(-1.0, 1.0)) for m in ("rgb", "nir", "tir")}
    return CameraNuisance(
        gains={m: gains[m] for m in modalities},
        hue_degrees=float(diff.hue_shift * rng.uniform(-1.0, 1.0)),
        blur_sigma=float(diff.blur * rng.uniform(0.25, 1.0)),
        noise_sigma=float(diff.noise * rng.uniform(0.5, 1.0)),
    )


def hue_rotation(degrees: float) -> np.ndarray:
    """3x3 matrix rotating RGB colours by `degrees` about the grey axis (greys stay grey)."""
    a = math.radians(degrees)
    c, s, k = math.cos(a), math.sin(a), (1.0 - math.cos(a)) / 3.0
    r = math.sqrt(1.0 / 3.0) * s
    return np.array([[c + k, k - r, k + r], [k + r, c + k, k - r], [k - r, k + r, c + k]], dtype=np.float32)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (H, W[, C]) with edge padding; sigma in pixels (< 0.3: unchanged)."""
    if sigma < 0.3:
        return img
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, pad, mode="edge")
    rows = sum(t * p[i : i + img.shape[0]] for i, t in enumerate(taps))
    return sum(t * rows[:, i : i + img.shape[1]] for i, t in enumerate(taps)).astype(np.float32)


def apply_camera(views: dict[str, np.ndarray], cam: CameraNuisance, rng: np.random.Generator) -> None:
    """Illumination gain, hue rotation (RGB), blur, then extra noise, per modality, in place."""
    for m, img in views.items():
        if m == "rgb" and cam.hue_degrees:
            img = img @ hue_rotation(cam.hue_degrees).T
        if cam.gains.get(m, 1.0) != 1.0:
            img = img * np.float32(cam.gains[m])
        img = gaussian_blur(img, cam.blur_sigma)
        if cam.noise_sigma > 0:
            img = img + rng.normal(0.0, cam.noise_sigma, img.shape).astype(np.float32)
        views[m] = img


def add_partial_occluder(views: dict[str, np.ndarray], diff: Difficulty, rng: np.random.Generator) -> float:
    """With probability occlusion_prob, a flat block covering a fraction of the frame (same place in every
    sensor): width in [0.5, 1] x sqrt(occlusion) of the frame, height likewise, from an edge. Returns the fraction."""
    if diff.occlusion <= 0 or rng.random() >= diff.occlusion_prob:
        return 0.0
    H, W = next(iter(views.values())).shape[:2]
    side = math.sqrt(diff.occlusion)
    w = max(1, int(W * side * rng.uniform(0.5, 1.0)))
    h = max(1, int(H * side * rng.uniform(0.5, 1.0)))
    x0 = int(rng.integers(0, W - w + 1))
    y0 = H - h if rng.random() < 0.7 else 0  # mostly from the bottom (a kerb, a car in front), else from the top
    level = float(rng.uniform(0.2, 0.6))
    for m in views:
        views[m][y0 : y0 + h, x0 : x0 + w] = level
    return w * h / (W * H)


def degrade_one(views: dict[str, np.ndarray], diff: Difficulty, rng: np.random.Generator) -> str | None:
    """With probability degrade_prob, one sensor (drawn) keeps only degrade_contrast of its contrast, plus noise."""
    if diff.degrade_prob <= 0 or len(views) < 2 or rng.random() >= diff.degrade_prob:
        return None
    m = list(views)[int(rng.integers(len(views)))]
    img = views[m]
    mean = np.float32(img.mean())
    views[m] = mean + (img - mean) * np.float32(diff.degrade_contrast) \
        + rng.normal(0.0, 0.03, img.shape).astype(np.float32)
    return m


def jitter_offsets(diff: Difficulty, rng: np.random.Generator) -> tuple[float, float, float]:
    """(scale factor, dx, dy as fractions of the frame) of one image's extra jitter."""
    j = diff.jitter
    return float(1.0 + j * rng.uniform(-1.0, 1.0)), float(0.5 * j * rng.uniform(-1.0, 1.0)), \
        float(0.5 * j * rng.uniform(-1.0, 1.0))
