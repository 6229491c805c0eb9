"""The runtime view of an artefact: the `Embedder` protocol every runtime implements and its `EmbedderInfo`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from graft_edge.artefact.record import ArtefactMeta


@dataclass(frozen=True)
class EmbedderInfo:
    """Everything a runtime needs to preprocess and describe a model."""

    format: str  # the runtime: torch | onnx | tensorrt
    path: str
    modalities: tuple[str, ...]
    img_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    params_embedding: int
    params_nonzero: int
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts (precision, history, ...)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = asdict(self)
        d["modalities"], d["img_size"] = list(self.modalities), list(self.img_size)
        return d


class Embedder(Protocol):
    """Maps a batch of per-modality images to L2-normalised embeddings."""

    info: EmbedderInfo

    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: float32 (B, 3, H, W) normalised} -> float32 (B, D)."""
        ...


def embedder_info(meta: Mapping[str, Any], path: str | Path, runtime: str,
                  extra: Mapping[str, Any] | None = None) -> EmbedderInfo:
    """An EmbedderInfo from an artefact's metadata (validated) plus runtime facts."""
    rec = ArtefactMeta.from_dict(meta, str(path))
    skip = {"params_embedding", "params_nonzero", "input_layout", "output", "artefact"}
    info_extra = {k: v for k, v in rec.extra.items() if k not in skip}
    info_extra.update(precision=rec.precision, input_names=list(rec.input_names), output_name=rec.output_name,
                      presence_input=rec.presence_input)
    if rec.batch is not None:
        info_extra["batch_range"] = [rec.batch.min, rec.batch.opt, rec.batch.max]
    info_extra.update(extra or {})
    return EmbedderInfo(format=runtime, path=str(path), modalities=rec.modalities, img_size=rec.img_size,
                        mean=rec.mean, std=rec.std, embed_dim=rec.embed_dim,
                        params_embedding=int(rec.extra.get("params_embedding", 0)),
                        params_nonzero=int(rec.extra.get("params_nonzero", 0)), extra=info_extra)


