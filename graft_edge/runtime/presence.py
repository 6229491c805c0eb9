"""Missing sensors at run time: feeds for a presence-mask graph, per-row masks on any backend, a subset view.

An artefact exported from a fusion-token GraFT has one input per trained modality plus a (B, M) float32
presence mask (`artefact.PRESENCE_INPUT`); a batch that lacks a modality gets zeros for it and 0 in
its mask column, which gives PyTorch's embedding of the present subset. Artefacts without the mask input
(older exports, vanilla-fusion models) need every modality and say so.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from graft_edge.artefact.embedder import Embedder, EmbedderInfo
from graft_edge.artefact.record import PRESENCE_INPUT
from graft_edge.errors import GraftError


def parse_subset(text: str | Sequence[str], trained: Sequence[str]) -> tuple[str, ...]:
    """'rgb,nir' -> the named modalities in the model's order; GraftError on an unknown, repeated or empty list."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not names:
        raise GraftError(f"--modalities {text!r}: name at least one of {','.join(trained)}")
    unknown = [m for m in names if m not in trained]
    if unknown:
        raise GraftError(f"--modalities: {unknown[0]!r} is not one of this model's modalities {','.join(trained)}")
    if len(set(names)) != len(names):
        raise GraftError(f"--modalities {text!r}: a modality is named twice")
    return tuple(m for m in trained if m in names)


def check_images(name: str, x: np.ndarray, img_size: Sequence[int]) -> np.ndarray:
    """A modality's batch as contiguous float32 (B, 3, H, W); GraftError naming the input otherwise."""
    H, W = int(img_size[0]), int(img_size[1])
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise GraftError(f"input {name!r} has dtype {arr.dtype}: expected float32")
    if arr.ndim != 4 or arr.shape[1:] != (3, H, W):
        raise GraftError(f"input {name!r} has shape {tuple(arr.shape)}: expected (B, 3, {H}, {W})")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_graph_inputs(input_names: Sequence[str], info: EmbedderInfo, path: Path) -> str | None:
    """The graph's presence-mask input name (None without one); GraftError when a graph input is neither one of
    the metadata's modalities nor that mask (a file whose metadata does not describe its graph)."""
    presence_input = info.extra.get("presence_input")
    missing = [m for m in input_names if m not in info.modalities and m != presence_input]
    if missing:
        raise GraftError(f"{path}: graph input {missing[0]!r} is not one of its metadata's modalities "
                         f"{','.join(info.modalities)}")
    return presence_input


def presence_feeds(batch: Mapping[str, np.ndarray], modalities: Sequence[str], img_size: Sequence[int],
                   presence_input: str | None, where: str) -> dict[str, np.ndarray]:
    """Graph feeds from {modality: images} (+ optional PRESENCE_INPUT (B, M) mask): checked, zero-filled, masked."""
    unknown = [k for k in batch if k not in modalities and k != PRESENCE_INPUT]
    if unknown:
        raise GraftError(f"input {unknown[0]!r} is not one of {where}'s modalities {','.join(modalities)}")
    given = [m for m in modalities if m in batch]
    if not given:
        raise GraftError(f"no input modality given: {where} takes some of {','.join(modalities)}")
    missing = [m for m in modalities if m not in batch]
    if (missing or PRESENCE_INPUT in batch) and not presence_input:
        raise GraftError(f"{where} needs every modality it was exported with ({','.join(modalities)}); missing "
                         f"{','.join(missing) or 'none, but a presence mask was given'} (it has no presence-mask "
                         "input: re-export a fusion-token model with this graft-edge)")
    feeds = {m: check_images(m, batch[m], img_size) for m in given}
    sizes = sorted({x.shape[0] for x in feeds.values()})
    if len(sizes) != 1:
        raise GraftError(f"modalities have different batch sizes {sizes}")
    B = sizes[0]
    zeros = np.zeros((B, 3, int(img_size[0]), int(img_size[1])), dtype=np.float32)
    feeds.update({m: zeros for m in missing})
    if not presence_input:
        return feeds
    mask = np.array([[m in batch for m in modalities]] * B, dtype=np.float32)
    if PRESENCE_INPUT in batch:
        mask = check_mask(batch[PRESENCE_INPUT], B, modalities) * mask
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:
        raise GraftError(f"sample {int(empty[0])} has no modality present (every sample needs at least one)")
    feeds[presence_input] = mask
    return {name: feeds[name] for name in (*modalities, presence_input)}


def check_mask(mask: np.ndarray, batch: int, modalities: Sequence[str]) -> np.ndarray:
    """A (B, M) presence mask of 0/1 values as float32; GraftError naming what is wrong."""
    arr = np.asarray(mask)
    if arr.dtype.kind not in "fiub":
        raise GraftError(f"input {PRESENCE_INPUT!r} has dtype {arr.dtype}: expected float32 or bool")
    if arr.shape != (batch, len(modalities)):
        raise GraftError(f"input {PRESENCE_INPUT!r} has shape {tuple(arr.shape)}: expected ({batch}, "
                         f"{len(modalities)}) for modalities {','.join(modalities)}")
    arr = arr.astype(np.float32)
    if not np.all((arr == 0) | (arr == 1)):
        raise GraftError(f"input {PRESENCE_INPUT!r} holds values other than 0 and 1")
    return arr


def embed_rows(embedder: Embedder, batch: Mapping[str, np.ndarray], present: np.ndarray | None) -> np.ndarray:
    """Embeddings where each row may have its own subset of modalities (`present`: (B, M) 0/1 or None = all given).

    A mask-input artefact takes the mask as it is; any other embedder runs once per distinct subset.
    """
    mods = tuple(embedder.info.modalities)
    if present is None:
        return embedder.embed(dict(batch))
    B = len(next(iter(batch.values())))
    mask = check_mask(present, B, mods) > 0
    if embedder.info.extra.get("presence_input"):
        return embedder.embed({**batch, PRESENCE_INPUT: mask.astype(np.float32)})
    out: np.ndarray | None = None
    for pattern in np.unique(mask, axis=0):
        rows = np.flatnonzero(np.all(mask == pattern, axis=1))
        subset = [m for m, on in zip(mods, pattern) if on]
        if not subset:
            raise GraftError(f"sample {int(rows[0])} has no modality present (every sample needs at least one)")
        missing = [m for m in subset if m not in batch]
        if missing:
            raise GraftError(f"the presence mask marks {missing[0]!r} present but no {missing[0]!r} input was given")
        part = embedder.embed({m: np.ascontiguousarray(batch[m][rows]) for m in subset})
        if out is None:
            out = np.zeros((B, part.shape[1]), dtype=np.float32)
        out[rows] = part
    return out


def supports_subsets(info: EmbedderInfo) -> bool:
    """True when the embedder computes embeddings from any non-empty subset of its modalities."""
    return info.format == "torch" or bool(info.extra.get("presence_input"))


class SubsetEmbedder:
    """An embedder restricted to some of its modalities (`--modalities rgb,nir`): the others count as missing."""

    def __init__(self, inner: Embedder, modalities: Sequence[str]) -> None:
        trained = tuple(inner.info.modalities)
        self.inner = inner
        self.modalities = parse_subset(list(modalities), trained)
        if self.modalities != trained and not supports_subsets(inner.info):
            raise GraftError(f"--modalities {','.join(self.modalities)}: {inner.info.path} needs all of "
                             f"{','.join(trained)} (no presence-mask input; re-export it with this graft-edge)")
        self.info = replace(inner.info, modalities=self.modalities,
                            extra={**inner.info.extra, "trained_modalities": list(trained)})

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: images} of the selected modalities -> (B, D); other modalities are dropped."""
        return self.inner.embed({m: x for m, x in batch.items() if m in self.modalities})

    def bind(self, batch: dict[str, np.ndarray]) -> Callable[[], Any]:
        """The wrapped runtime's device-resident call on the selected modalities (plain `embed` where it has none)."""
        kept = {m: x for m, x in batch.items() if m in self.modalities}
        bind = getattr(self.inner, "bind", None)
        return bind(kept) if callable(bind) else (lambda: self.inner.embed(kept))

    def synchronize(self) -> None:
        """Wait for the wrapped runtime's queued work."""
        sync = getattr(self.inner, "synchronize", None)
        if sync is not None:
            sync()
