"""BNNeck + bias-free identity classifier (Luo et al. 2019), used in training only."""
from __future__ import annotations

import torch
from torch import nn


class BNNeck(nn.Module):
    """BatchNorm1d with its bias frozen at zero, then a bias-free linear classifier."""

    def __init__(self, dim: int, num_ids: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.classifier = nn.Linear(dim, num_ids, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> normalised (B, D), logits (B, num_ids)."""
        neck = self.bn(emb)
        return neck, self.classifier(neck)
