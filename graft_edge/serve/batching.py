"""One dynamic batch of serving requests -> one answer per request: an embedding, or that request's own error.

Each request is checked and decoded on its own before it joins the runtime batch, with the runtime's own
checks (runtime.presence), so a malformed request (no input, mixed forms, undecodable bytes, NaN or
infinite values, a sample with no modality, a bad presence mask) gets its own error and every
well-formed request batched with it gets its embedding; the runtime then sees only batches it accepts.
Requests with the same inputs run as one runtime call. No Triton here: the Python-backend model
(serve.backend) hands this module plain {input name: array} dicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np

from graft_edge.artefact.embedder import Embedder, EmbedderInfo
from graft_edge.artefact.record import PRESENCE_INPUT
from graft_edge.errors import GraftError
from graft_edge.runtime.presence import check_images, check_mask, embed_rows, supports_subsets
from graft_edge.serve.images import ImagePreprocessor

IMAGE_INPUT = "image"  # one side-by-side encoded image
IMAGE_SUFFIX = "_image"  # <modality>_image: one encoded image per modality
Answer = Union[np.ndarray, GraftError]  # a request's (B, D) embeddings, or why it was refused


@dataclass(frozen=True)
class Assembled:
    """One request as the runtime takes it: {modality: (B, 3, H, W)} and its (B, M) presence mask (None: all)."""

    images: dict[str, np.ndarray]
    present: np.ndarray | None

    @property
    def rows(self) -> int:
        return len(next(iter(self.images.values())))


def input_specs(info: EmbedderInfo) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every (optional) input a served model takes, as (name, Triton datatype, per-sample dims)."""
    H, W = info.img_size
    mods = tuple(info.modalities)
    return ([(m, "FP32", (3, H, W)) for m in mods] + [(IMAGE_INPUT, "BYTES", (1,))]
            + [(m + IMAGE_SUFFIX, "BYTES", (1,)) for m in mods] + [(PRESENCE_INPUT, "FP32", (len(mods),))])


def _rows(value: np.ndarray) -> list[bytes]:
    """A BYTES input of shape (B, 1) -> B byte strings."""
    flat = np.asarray(value, dtype=object).reshape(len(value), -1)[:, 0]
    return [v if isinstance(v, bytes) else bytes(v) for v in flat]


class RequestAssembler:
    """Turns one request's inputs into an Assembled batch, or raises GraftError naming what is wrong with it."""

    def __init__(self, info: EmbedderInfo) -> None:
        self.info = info
        self.modalities = tuple(info.modalities)
        self.images = ImagePreprocessor(info)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> Assembled:
        images = self._decode(inputs)
        n = len(next(iter(images.values())))
        if len({len(x) for x in images.values()}) != 1:
            raise GraftError(f"request inputs have different batch sizes {sorted({len(x) for x in images.values()})}")
        given = np.array([[m in images for m in self.modalities]] * n, np.float32)
        present = inputs.get(PRESENCE_INPUT)
        if present is not None:
            present = check_mask(present, n, self.modalities) * given
        elif len(images) < len(self.modalities):
            present = given
        if present is not None:
            empty = np.flatnonzero(present.sum(axis=1) == 0)
            if empty.size:
                raise GraftError(f"sample {int(empty[0])} of this request has no modality present (every sample needs "
                                 "at least one)")
            if not supports_subsets(self.info) and not present.all():
                raise GraftError(f"this model needs every modality it was exported with ({','.join(self.modalities)}): "
                                 "it has no presence-mask input")
        return Assembled(images, present)

    def _decode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{modality: float32 images} from the request's one input form; GraftError on none, several or bad bytes."""
        tensors = [m for m in self.modalities if m in inputs]
        per_mod = [m for m in self.modalities if m + IMAGE_SUFFIX in inputs]
        side = IMAGE_INPUT in inputs
        forms = [f for f, used in (("tensors", tensors), ("'image'", side), ("'<modality>_image'", per_mod)) if used]
        if not forms:
            raise GraftError(f"request has no input: send float32 {', '.join(repr(m) for m in self.modalities)} "
                             f"tensors, an encoded side-by-side '{IMAGE_INPUT}', or '<modality>{IMAGE_SUFFIX}' bytes")
        if len(forms) > 1:
            raise GraftError(f"request mixes input forms ({' and '.join(forms)}): use one per request")
        if tensors:
            images = {m: check_images(m, inputs[m], self.info.img_size) for m in tensors}
            bad = [m for m, x in images.items() if not np.isfinite(x).all()]
            if bad:
                raise GraftError(f"input {bad[0]!r} holds NaN or infinite values")
            return images
        if side:
            decoded = [self.images.side_by_side(b) for b in _rows(inputs[IMAGE_INPUT])]
            return {m: np.stack([d[m] for d in decoded]) for m in self.modalities}
        rows = {m: _rows(inputs[m + IMAGE_SUFFIX]) for m in per_mod}
        if len({len(r) for r in rows.values()}) != 1:
            raise GraftError(f"request inputs have different batch sizes {sorted({len(r) for r in rows.values()})}")
        decoded = [self.images.per_modality({m: rows[m][i] for m in per_mod}) for i in range(len(rows[per_mod[0]]))]
        return {m: np.stack([d[m] for d in decoded]) for m in per_mod}


def run_group(embedder: Embedder, parts: Sequence[Assembled]) -> list[np.ndarray]:
    """Requests with the same inputs as one runtime call -> each request's float32 (B, D) embeddings."""
    keys = list(parts[0].images)
    images = {m: np.concatenate([p.images[m] for p in parts]) for m in keys}
    present = None
    if any(p.present is not None for p in parts):
        present = np.concatenate([p.present if p.present is not None else np.ones((p.rows, len(embedder.info.modalities)),
                                                                                   np.float32) for p in parts])
    emb = np.asarray(embed_rows(embedder, images, present), dtype=np.float32)
    bounds = np.cumsum([0] + [p.rows for p in parts])
    return [np.ascontiguousarray(emb[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def embed_requests(embedder: Embedder, assemble: RequestAssembler,
                   requests: Sequence[Mapping[str, np.ndarray]]) -> list[Answer]:
    """One answer per request, in order: its embeddings, or the GraftError that refused it (batch-mates unaffected).

    A failure of the runtime itself (not of one request) raises: it is every request's failure.
    """
    answers: list[Answer | None] = [None] * len(requests)
    groups: dict[tuple[str, ...], list[tuple[int, Assembled]]] = {}
    for i, inputs in enumerate(requests):
        try:
            part = assemble(inputs)
        except GraftError as exc:
            answers[i] = exc
            continue
        groups.setdefault(tuple(sorted(part.images)), []).append((i, part))
    for members in groups.values():
        for (i, _), emb in zip(members, run_group(embedder, [p for _, p in members])):
            answers[i] = emb
    return answers  # type: ignore[return-value]
