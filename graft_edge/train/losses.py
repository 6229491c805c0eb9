"""GraFT losses (paper §4.2-4.3): soft-margin triplet over token combinations, center loss, CE."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from graft_edge.config import CENTER_MODES, TRIPLET_COMBOS, LossConfig
from graft_edge.model.graft import GraftOutput, masked_mean


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32: 16-bit (autocast) activations are upcast, float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_features(out: GraftOutput, kind: str) -> torch.Tensor:
    """'F' -> fused embedding (B, D); 'D' -> data token averaged over the (present) modalities (B, D) (eq. 11-12)."""
    return out.embedding if kind == "F" else masked_mean(out.data_tokens, out.present)


def random_triplets(labels: torch.Tensor, per_anchor: int = 1,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (anchor, positive, negative) index triples: `per_anchor` per anchor that has both in the batch.

    The official code draws `num_triplet_samples` (8) random triplets per anchor image
    (Nano1337/GraFT data_utils/datasets/rgbnt_data_folders.py); here they are drawn inside the P x K
    batch: positive uniformly among the anchor's other images, negative among the other ids' images.
    """
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    pos_mask = (same & ~torch.eye(n, dtype=torch.bool, device=labels.device)).cpu()
    neg_mask = (~same).cpu()
    anchors = torch.nonzero(pos_mask.any(1) & neg_mask.any(1)).flatten()
    t = max(1, int(per_anchor))
    keys = torch.rand((2, len(anchors), t, n), generator=generator)  # uniform keys per candidate: argmax = draw
    pos = keys[0].masked_fill(~pos_mask[anchors][:, None, :], -1.0).argmax(-1)
    neg = keys[1].masked_fill(~neg_mask[anchors][:, None, :], -1.0).argmax(-1)
    dev = labels.device
    return anchors.repeat_interleave(t).to(dev), pos.flatten().to(dev), neg.flatten().to(dev)


def _hardest(dist_ap: torch.Tensor, dist_an: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor the farthest positive and the closest negative distance (batch-hard mining)."""
    same = labels[:, None] == labels[None, :]
    pos_mask = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    neg_mask = ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    d_ap = dist_ap.masked_fill(~pos_mask, float("-inf")).amax(1)
    d_an = dist_an.masked_fill(~neg_mask, float("inf")).amin(1)
    return d_ap[valid], d_an[valid]


def triplet_loss(out: GraftOutput, labels: torch.Tensor, combo: str = "FFD", mining: str = "hard",
                 generator: torch.Generator | None = None, per_anchor: int = 1) -> torch.Tensor:
    """Soft-margin triplet softplus(d(a,p) - d(a,n)) with anchor/positive/negative tokens from `combo`.

    mining="random": `per_anchor` random triplets per anchor (the paper's and the official code's);
    mining="hard": the batch-hard triplet of each anchor (an option, not the authors' recipe).
    softplus(d_ap - d_an) is torch's SoftMarginLoss(d_an - d_ap, 1), as in Nano1337/GraFT loss/reid_loss.py.
    """
    if combo not in TRIPLET_COMBOS:
        raise ValueError(f"unknown triplet combination {combo!r}: expected one of {TRIPLET_COMBOS}")
    anchor = full_precision(token_features(out, combo[0]))
    positive = full_precision(token_features(out, combo[1]))
    negative = full_precision(token_features(out, combo[2]))
    if mining == "hard":
        d_ap, d_an = _hardest(torch.cdist(anchor, positive), torch.cdist(anchor, negative), labels)
    else:
        a, p, n = random_triplets(labels, per_anchor, generator)
        d_ap = (anchor[a] - positive[p]).norm(dim=1)
        d_an = (anchor[a] - negative[n]).norm(dim=1)
    if d_ap.numel() == 0:
        return anchor.sum() * 0.0
    return F.softplus(d_ap - d_an).mean()


class CenterLoss(nn.Module):
    """Center loss Σ_b ‖f_b − c_{y_b}‖² / B, the official scaling (Nano1337/GraFT loss/reid_loss.py Center_Loss).

    Wen et al. (2016) write ½·Σ; the official code (and so the authors' β = 0.0005) has no ½.
    centers="learned": start near zero (N(0, 0.01²)) and are trained (SGD, the trainer's `center_lr`);
    "fixed": N(0, 1) and never trained, as in the official code, whose centers live in the loss module
    that its optimiser never receives.
    """

    def __init__(self, num_ids: int, dim: int, centers: str = "learned") -> None:
        super().__init__()
        if centers not in CENTER_MODES:
            raise ValueError(f"unknown center mode {centers!r}: expected one of {CENTER_MODES}")
        fixed = centers == "fixed"
        init = torch.randn(num_ids, dim) if fixed else torch.randn(num_ids, dim) * 0.01
        self.centers = nn.Parameter(init, requires_grad=not fixed)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """feats (B, D), labels (B,) -> scalar."""
        return (full_precision(feats) - self.centers[labels]).pow(2).sum(1).mean()


class LossParts(NamedTuple):
    """The weighted total and its unweighted parts (for logging); distill: the weighted distillation term, if any."""

    total: torch.Tensor
    triplet: torch.Tensor
    center: torch.Tensor
    ce: torch.Tensor
    distill: torch.Tensor | None = None


class GraftLoss(nn.Module):
    """α·triplet + β·center + γ·CE (eq. 10); CE is label-smoothed and uses the BNNeck output."""

    def __init__(self, cfg: LossConfig, num_ids: int, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.center = CenterLoss(num_ids, dim, cfg.centers)

    def forward(self, out: GraftOutput, labels: torch.Tensor, generator: torch.Generator | None = None) -> LossParts:
        """Combined loss of one batch; `generator` draws the random triplets (torch's global RNG when None)."""
        c = self.cfg
        trip = triplet_loss(out, labels, c.combo, c.mining, generator, c.triplets_per_anchor)
        cent = self.center(out.embedding, labels) if c.beta > 0 else trip.new_zeros(())
        ce = F.cross_entropy(full_precision(out.logits), labels, label_smoothing=c.label_smoothing)
        return LossParts(c.alpha * trip + c.beta * cent + c.gamma * ce, trip.detach(), cent.detach(), ce.detach())
