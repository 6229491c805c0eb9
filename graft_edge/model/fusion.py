"""Fusion of per-modality data tokens: GraFT fusion tokens and the two vanilla baselines (Table 5)."""
from __future__ import annotations

import torch
from torch import nn

from graft_edge.config import ModelConfig


def encoder_layer(dim: int, cfg: ModelConfig) -> nn.TransformerEncoderLayer:
    """One modality encoder with the authors' settings (post-norm, ReLU)."""
    return nn.TransformerEncoderLayer(
        d_model=dim, nhead=cfg.enc_heads, dim_feedforward=cfg.enc_ff, dropout=cfg.enc_dropout,
        activation="relu", batch_first=True, norm_first=False,
    )


class FusionTokenFusion(nn.Module):
    """GraFT (eq. 3-7): one encoder per modality over [fusion token; data tokens]; average the fusion outputs."""

    def __init__(self, dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.data_token_index = cfg.data_token_index
        self.fusion_token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.fusion_token)
        self.encoders = nn.ModuleDict({m: encoder_layer(dim, cfg) for m in cfg.modalities})

    def forward(self, tokens: torch.Tensor, present: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (M, B, N, D) -> fusion tokens (B, M, D), sampled data tokens (B, M, D)."""
        _, B, _, D = tokens.shape
        fusion = self.fusion_token.expand(B, 1, D)  # shared by every modality
        fused, data = [], []
        for i, m in enumerate(present):
            out = self.encoders[m](torch.cat([fusion, tokens[i]], dim=1))  # (B, 1+N, D)
            fused.append(out[:, 0])
            data.append(out[:, 1 + self.data_token_index])
        return torch.stack(fused, dim=1), torch.stack(data, dim=1)


class VanillaFusion(nn.Module):
    """Table 5 baselines: one encoder over all modalities' tokens concatenated; CLS output or token mean."""

    def __init__(self, dim: int, cfg: ModelConfig, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.data_token_index = cfg.data_token_index
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.cls_token)
        self.encoders = nn.ModuleDict({"joint": encoder_layer(dim, cfg)})

    def forward(self, tokens: torch.Tensor, present: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (M, B, N, D) -> pooled token repeated per modality (B, M, D), data tokens (B, M, D)."""
        M, B, N, D = tokens.shape
        seq = tokens.permute(1, 0, 2, 3).reshape(B, M * N, D)  # all modalities side by side
        out = self.encoders["joint"](torch.cat([self.cls_token.expand(B, 1, D), seq], dim=1))
        body = out[:, 1:].reshape(B, M, N, D)
        pooled = out[:, 0] if self.mode == "cls" else body.mean(dim=(1, 2))
        return pooled.unsqueeze(1).expand(B, M, D), body[:, :, self.data_token_index]


def create_fusion(dim: int, cfg: ModelConfig) -> nn.Module:
    """The fusion module named by cfg.fusion."""
    if cfg.fusion == "token":
        return FusionTokenFusion(dim, cfg)
    return VanillaFusion(dim, cfg, cfg.fusion)
