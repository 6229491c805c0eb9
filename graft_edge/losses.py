"""GraFT losses (paper §4.2-4.3): soft-margin triplet over token combinations, center loss, CE."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from graft_edge.config import TRIPLET_COMBOS, LossConfig
from graft_edge.model.graft import GraftOutput


def token_features(out: GraftOutput, kind: str) -> torch.Tensor:
    """'F' -> fused embedding (B, D); 'D' -> data token averaged over modalities (B, D) (eq. 11-12)."""
    return out.embedding if kind == "F" else out.data_tokens.mean(dim=1)


def _mine(dist_ap: torch.Tensor, dist_an: torch.Tensor, labels: torch.Tensor, mining: str,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one positive and one negative distance per anchor: hardest, or uniformly at random."""
    same = labels[:, None] == labels[None, :]
    pos_mask = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    neg_mask = ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    if mining == "hard":
        d_ap = dist_ap.masked_fill(~pos_mask, float("-inf")).amax(1)
        d_an = dist_an.masked_fill(~neg_mask, float("inf")).amin(1)
    else:
        noise = torch.rand(dist_ap.shape, generator=generator, device="cpu").to(dist_ap.device)
        pos_idx = noise.masked_fill(~pos_mask, -1.0).argmax(1)
        neg_idx = noise.masked_fill(~neg_mask, -1.0).argmax(1)
        d_ap = dist_ap.gather(1, pos_idx[:, None]).squeeze(1)
        d_an = dist_an.gather(1, neg_idx[:, None]).squeeze(1)
    return d_ap[valid], d_an[valid]


def triplet_loss(out: GraftOutput, labels: torch.Tensor, combo: str = "FFD", mining: str = "hard",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Soft-margin triplet softplus(d(a,p) - d(a,n)) with anchor/positive/negative tokens from `combo`."""
    if combo not in TRIPLET_COMBOS:
        raise ValueError(f"unknown triplet combination {combo!r}: expected one of {TRIPLET_COMBOS}")
    anchor = token_features(out, combo[0]).float()
    positive = token_features(out, combo[1]).float()
    negative = token_features(out, combo[2]).float()
    d_ap, d_an = _mine(torch.cdist(anchor, positive), torch.cdist(anchor, negative), labels, mining, generator)
    if d_ap.numel() == 0:
        return anchor.sum() * 0.0
    return F.softplus(d_ap - d_an).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): mean over the batch of ½‖f − c_y‖²; the centers are parameters."""

    def __init__(self, num_ids: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_ids, dim) * 0.01)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """feats (B, D), labels (B,) -> scalar."""
        return 0.5 * (feats.float() - self.centers[labels]).pow(2).sum(1).mean()


class LossParts(NamedTuple):
    """The weighted total and its unweighted parts (for logging)."""

    total: torch.Tensor
    triplet: torch.Tensor
    center: torch.Tensor
    ce: torch.Tensor


class GraftLoss(nn.Module):
    """α·triplet + β·center + γ·CE (eq. 10); CE is label-smoothed and uses the BNNeck output."""

    def __init__(self, cfg: LossConfig, num_ids: int, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.center = CenterLoss(num_ids, dim)

    def forward(self, out: GraftOutput, labels: torch.Tensor) -> LossParts:
        """Combined loss of one batch."""
        c = self.cfg
        trip = triplet_loss(out, labels, c.combo, c.mining)
        cent = self.center(out.embedding, labels) if c.beta > 0 else trip.new_zeros(())
        ce = F.cross_entropy(out.logits.float(), labels, label_smoothing=c.label_smoothing)
        return LossParts(c.alpha * trip + c.beta * cent + c.gamma * ce, trip.detach(), cent.detach(), ce.detach())
