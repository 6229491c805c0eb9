"""The multi-stream baseline (paper Tables 1-2): one ViT per modality, no weight sharing, CLS tokens averaged.

It replaces GraFT's shared backbone and fusion encoders, keeps everything else (BNNeck head, losses,
recipe), and exposes the same surface the rest of the package relies on: `backbone.blocks` (every
stream's transformer blocks, in modality order, for structured pruning and the pruned-arch record),
`backbone.embed_dim`, and a fusion module with an (empty) `encoders` dict.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from graft_edge.config import ModelConfig
from graft_edge.model.backbone import create_backbone


class MultiStreamBackbone(nn.Module):
    """One timm ViT per modality (each built and initialised like GraFT's shared backbone)."""

    def __init__(self, cfg: ModelConfig, pretrained: bool | None = None) -> None:
        super().__init__()
        self.streams = nn.ModuleDict({m: create_backbone(cfg, pretrained) for m in cfg.modalities})
        self.embed_dim = int(next(iter(self.streams.values())).embed_dim)

    @property
    def blocks(self) -> list[nn.Module]:
        """Every stream's transformer blocks, streams in modality order (what pruning walks)."""
        return [blk for stream in self.streams.values() for blk in stream.blocks]

    def stream_tokens(self, inputs: Mapping[str, torch.Tensor], present: tuple[str, ...]) -> torch.Tensor:
        """{modality: (B, 3, H, W)} -> (M, B, N, D): each present modality through its own ViT."""
        return torch.stack([self.streams[m].forward_features(inputs[m]) for m in present])


class StreamFusion(nn.Module):
    """No fusion layers: each modality's CLS output is its 'fusion token'; the data token is picked as in GraFT."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.data_token_index = cfg.data_token_index
        self.encoders = nn.ModuleDict()  # nothing to prune here

    def forward(self, tokens: torch.Tensor, present: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (M, B, N, D) -> CLS tokens (B, M, D), data tokens (B, M, D)."""
        return tokens[:, :, 0].transpose(0, 1), tokens[:, :, self.data_token_index].transpose(0, 1)
