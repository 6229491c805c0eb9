"""GraFT: shared ViT backbone -> per-modality fusion encoders -> averaged fusion token (paper §3).

With model.fusion=multistream the same class is the multi-stream baseline: one ViT per modality
(multistream.py), each modality's CLS token averaged into the embedding.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from graft_edge.config import ModelConfig
from graft_edge.errors import GraftError
from graft_edge.model.backbone import create_backbone, unused_modules
from graft_edge.model.fusion import create_fusion
from graft_edge.model.head import BNNeck
from graft_edge.model.multistream import MultiStreamBackbone, StreamFusion


class GraftOutput(NamedTuple):
    """What the model returns, in train and eval alike."""

    embedding: torch.Tensor  # (B, D) fused embedding Z_f, pre-BN (triplet / center losses)
    neck: torch.Tensor  # (B, D) BNNeck output (CE input)
    logits: torch.Tensor  # (B, num_ids)
    fusion_tokens: torch.Tensor  # (B, M, D) each present modality's fusion-token output
    data_tokens: torch.Tensor  # (B, M, D) each present modality's sampled data token
    present: torch.Tensor | None = None  # (B, M) 0/1 presence mask when the forward took one (every modality's tokens)


def masked_mean(tokens: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """(B, M, D) per-modality tokens -> (B, D): the mean over each row's present modalities (all when None)."""
    if present is None:
        return tokens.mean(dim=1)
    weight = present.to(tokens.dtype).unsqueeze(-1)  # (B, M, 1)
    return (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)


class GraFT(nn.Module):
    """Gradual Fusion Transformer for multimodal ReID."""

    def __init__(self, cfg: ModelConfig, pretrained: bool | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.modalities = tuple(cfg.modalities)
        multi = cfg.fusion == "multistream"
        self.backbone = MultiStreamBackbone(cfg, pretrained) if multi else create_backbone(cfg, pretrained)
        dim = int(self.backbone.embed_dim)
        self.embed_dim = dim
        self.fusion = StreamFusion(cfg) if multi else create_fusion(dim, cfg)
        self.head = BNNeck(dim, cfg.num_ids)

    def present(self, inputs: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
        """The configured modalities found in `inputs`, in canonical order; rejects unknown keys."""
        unknown = [k for k in inputs if k not in self.modalities]
        if unknown:
            raise GraftError(f"modality {unknown[0]!r} is not one of this model's {','.join(self.modalities)}")
        present = tuple(m for m in self.modalities if m in inputs)
        if not present:
            raise GraftError(f"no input modality given: expected some of {','.join(self.modalities)}")
        return present

    def forward(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> GraftOutput:
        """inputs: {modality: (B, 3, H, W)}; missing modalities are averaged out.

        With a (B, M) 0/1 `present` mask (missing-modality training) every modality's images go in and each row's
        fusion tokens are averaged over its present modalities only: the computation of `embed_masked` and of the
        exported graphs, with the classifier head on top.
        """
        if present is not None:
            return self.outputs(*self.modality_tokens(inputs), present)
        return self.outputs(*self.tokens(inputs))

    def tokens(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-sample part of forward: fusion tokens and sampled data tokens, (B, M, D) each."""
        present = self.present(inputs)
        if isinstance(self.backbone, MultiStreamBackbone):
            tokens = self.backbone.stream_tokens(inputs, present)  # (M, B, N, D), one ViT per modality
        else:
            x = torch.stack([inputs[m] for m in present])  # (M, B, 3, H, W)
            M, B = x.shape[:2]
            tokens = self.backbone.forward_features(x.flatten(0, 1))  # (M*B, N, D), one shared pass
            tokens = tokens.unflatten(0, (M, B))  # (M, B, N, D)
        return self.fusion(tokens, present)  # (B, M, D) each

    def outputs(self, fusion_tokens: torch.Tensor, data_tokens: torch.Tensor,
                present: torch.Tensor | None = None) -> GraftOutput:
        """The batch part of forward: embedding (eq. 6, over each row's present modalities) and the BNNeck, whose
        training statistics are the batch's.

        Under DDP the trainer calls it on every process's tokens gathered, so the BatchNorm sees the global batch.
        """
        embedding = masked_mean(fusion_tokens, present)  # (B, D)
        neck, logits = self.head(embedding)
        return GraftOutput(embedding, neck, logits, fusion_tokens, data_tokens, present)

    def embed(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inference path: the L2-normalised matching embedding (B, D)."""
        out = self(inputs)
        feat = out.embedding if self.cfg.neck_feat == "before" else out.neck
        return F.normalize(feat, dim=-1)

    @property
    def supports_presence_mask(self) -> bool:
        """True when a missing modality can be masked per sample: each fusion token sees only its own modality."""
        return self.cfg.fusion == "token"

    def modality_tokens(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every modality's fusion-token outputs and sampled data tokens, (B, M, D) each, in one backbone pass.

        Each modality's tokens depend on its own images only (a GraFT fusion token attends to its own modality), so
        any subset's embedding is a masked mean of these (`masked_mean`, `combine`).
        """
        if not self.supports_presence_mask:
            raise GraftError(f"model.fusion={self.cfg.fusion!r} mixes modalities in one encoder: a missing one "
                             "cannot be masked out (only fusion=token models can)")
        absent = [m for m in self.modalities if m not in inputs]
        if absent:
            raise GraftError(f"a presence mask needs every modality's images (zeros where absent); {absent[0]!r} "
                             "was not given")
        x = torch.stack([inputs[m] for m in self.modalities])  # (M, B, 3, H, W)
        M, B = x.shape[:2]
        tokens = self.backbone.forward_features(x.flatten(0, 1)).unflatten(0, (M, B))
        return self.fusion(tokens, self.modalities)  # (B, M, D) each

    def combine(self, fusion_tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, M, D) fusion tokens + (B, M) 0/1 mask -> the L2-normalised matching embedding of each row's subset."""
        embedding = masked_mean(fusion_tokens, present)
        feat = embedding if self.cfg.neck_feat == "before" else self.head.bn(embedding)
        return F.normalize(feat, dim=-1)

    def embed_masked(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Every modality's images (anything finite where absent) + a (B, M) 0/1 mask -> `embed` of each row's subset.

        One graph for every subset of sensors (what exported artefacts run): all modalities go through the
        backbone, and the fusion tokens are averaged over the present ones only. Equal to `embed` of the
        present modalities because a GraFT fusion token attends to its own modality's tokens only.
        """
        return self.combine(self.modality_tokens(inputs)[0], present)


def build_model(cfg: ModelConfig, pretrained: bool | None = None) -> GraFT:
    """Create a GraFT model from its config (pretrained backbone when cfg.pretrained)."""
    return GraFT(cfg, pretrained)


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """All parameters (or only the nonzero ones)."""
    params = list({id(p): p for p in model.parameters()}.values())
    if nonzero:
        return int(sum(int(torch.count_nonzero(p.detach())) for p in params))
    return int(sum(p.numel() for p in params))


def embedding_params(model: GraFT, nonzero: bool = False) -> int:
    """Parameters of the deployed embedding model: the training-only classifier (and an unused BNNeck) excluded,
    and the backbone's own pooling/classifier heads, which `forward_features` never runs (e.g. `attn_pool`)."""
    excluded = [model.head.classifier, *unused_modules(model.backbone)]
    if model.cfg.neck_feat == "before":
        excluded.append(model.head.bn)
    return count_params(model, nonzero) - sum(count_params(m, nonzero) for m in excluded)
