"""The metadata record of a model about to be exported (the record itself lives in graft_edge.artefact)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from graft_edge.artefact.record import PRESENCE_INPUT, ArtefactMeta
from graft_edge.artefact.versions import software_versions
from graft_edge.model import count_params, embedding_params
from graft_edge.model.flops import model_flops_per_sample


def model_metadata(model: Any, checkpoint: Any, checkpoint_path: str | Path, source_sha256: str,
                   opset: int) -> ArtefactMeta:
    """The precision-independent facts of a GraFT model and its checkpoint, as an FP32 record."""
    cfg = model.cfg
    provenance = {
        "input_layout": "NCHW float32, RGB, resized to img_size, x = (pixel/255 - mean) / std",
        "output": "L2-normalised embedding (B, embed_dim); match by cosine / Euclidean distance",
        "neck_feat": cfg.neck_feat,
        "backbone": cfg.backbone,
        "fusion": cfg.fusion,
        "preset": getattr(checkpoint.config, "preset", None),
        "params_total": count_params(model),
        "params_embedding": embedding_params(model),
        "params_nonzero": embedding_params(model, nonzero=True),
        "flops_per_sample": model_flops_per_sample(model),  # the roofline's numerator (bench, frontier)
        "pruned": bool(checkpoint.arch),
        "history": list(checkpoint.history or []),
        "source_checkpoint": Path(checkpoint_path).name,
        "source_sha256": source_sha256,
        "tool_versions": software_versions(),
        "opset": opset,
    }
    masked = bool(getattr(model, "supports_presence_mask", False))
    if masked:
        provenance["missing_modalities"] = (f"any non-empty subset: feed zeros for an absent modality and 0 in its "
                                            f"column of {PRESENCE_INPUT} (B, M float32, modalities order)")
    return ArtefactMeta(modalities=tuple(model.modalities), img_size=tuple(int(v) for v in cfg.img_size),
                        mean=tuple(float(v) for v in cfg.mean), std=tuple(float(v) for v in cfg.std),
                        embed_dim=int(model.embed_dim), precision="fp32",
                        input_names=tuple(model.modalities) + ((PRESENCE_INPUT,) if masked else ()),
                        extra=provenance, presence_input=PRESENCE_INPUT if masked else None)
