"""Losses on hand-computed cases: soft-margin triplet (token combos, mining), center loss, CE."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from graft_edge.config import TRIPLET_COMBOS, LossConfig
from graft_edge.model import GraftOutput
from graft_edge.train.losses import CenterLoss, GraftLoss, random_triplets, token_features, triplet_loss


def _out(emb, data_tokens, num_ids=3):
    emb = torch.tensor(emb, dtype=torch.float32)
    data = torch.tensor(data_tokens, dtype=torch.float32)
    B, D = emb.shape
    return GraftOutput(emb, emb.clone(), torch.zeros(B, num_ids), emb[:, None].expand(B, 2, D), data)


def test_hard_mining_hand_computed() -> None:
    # 1-D embeddings: ids [0, 0, 1]
    out = _out([[0.0], [1.0], [3.0]], [[[0.0], [0.0]], [[0.0], [0.0]], [[0.0], [0.0]]])
    labels = torch.tensor([0, 0, 1])
    # FFF: anchor 0 -> d_ap=1, d_an=3; anchor 1 -> d_ap=1, d_an=2; anchor 2 has no positive (skipped)
    expected = (math.log1p(math.exp(1 - 3)) + math.log1p(math.exp(1 - 2))) / 2
    assert triplet_loss(out, labels, "FFF").item() == pytest.approx(expected, rel=1e-6)


def test_ffd_uses_the_averaged_data_token_as_negative() -> None:
    # data tokens of sample 2 average to 5.0 (modalities 4 and 6); fused embeddings as before
    out = _out([[0.0], [1.0], [3.0]], [[[9.0], [9.0]], [[9.0], [9.0]], [[4.0], [6.0]]])
    labels = torch.tensor([0, 0, 1])
    assert torch.allclose(token_features(out, "D"), torch.tensor([[9.0], [9.0], [5.0]]))
    # anchor 0: d_ap = |0-1| = 1, d_an = |0-5| = 5; anchor 1: d_ap = 1, d_an = |1-5| = 4
    expected = (math.log1p(math.exp(1 - 5)) + math.log1p(math.exp(1 - 4))) / 2
    assert triplet_loss(out, labels, "FFD").item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("combo", TRIPLET_COMBOS)
def test_every_combo_matches_a_direct_computation(combo: str) -> None:
    torch.manual_seed(0)
    emb, data = torch.randn(6, 4), torch.randn(6, 3, 4)
    out = GraftOutput(emb, emb, torch.zeros(6, 3), emb[:, None].expand(6, 3, 4), data)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    feats = {"F": emb, "D": data.mean(1)}
    a, p, n = feats[combo[0]], feats[combo[1]], feats[combo[2]]
    losses = []
    for i in range(6):
        pos = [j for j in range(6) if labels[j] == labels[i] and j != i]
        neg = [j for j in range(6) if labels[j] != labels[i]]
        d_ap = max((a[i] - p[j]).norm() for j in pos)
        d_an = min((a[i] - n[j]).norm() for j in neg)
        losses.append(F.softplus(d_ap - d_an))
    assert triplet_loss(out, labels, combo).item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


def _combo_losses(emb: list[float], labels: list[int], valid_only: bool) -> set[float]:
    """Every mean soft-margin loss over anchors from one (positive, negative) choice per anchor (1-D features)."""
    n = len(emb)
    per_anchor = []
    for i in range(n):
        pos = [j for j in range(n) if labels[j] == labels[i] and j != i] if valid_only else range(n)
        neg = [j for j in range(n) if labels[j] != labels[i]] if valid_only else range(n)
        per_anchor.append([(abs(emb[i] - emb[p]), abs(emb[i] - emb[q])) for p in pos for q in neg])
    return {round(sum(math.log1p(math.exp(ap - an)) for ap, an in pick) / n, 9)
            for pick in itertools.product(*per_anchor)}


def test_random_mining_picks_a_same_id_positive_and_an_other_id_negative() -> None:
    emb, ids = [0.0, 1.1, 3.7, 7.3], [0, 0, 1, 1]
    out = _out([[e] for e in emb], [[[0.0], [0.0]]] * 4)
    labels = torch.tensor(ids)
    valid = _combo_losses(emb, ids, valid_only=True)
    invalid = _combo_losses(emb, ids, valid_only=False) - valid
    # the fixture tells picks apart: 2 ids x 2 images -> one positive and two negatives per anchor, 16 valid losses,
    # none of which any invalid pick (itself or a same-id image as negative, an other-id image as positive) reproduces
    assert len(valid) == 16 and not any(abs(v - w) < 1e-6 for v in valid for w in invalid)
    seen = set()
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        value = triplet_loss(out, labels, "FFF", mining="random", generator=g).item()
        match = [v for v in valid if abs(v - value) < 1e-5]
        assert match, (seed, value)  # every draw is one of the valid (positive, negative) choices
        seen.add(match[0])
    assert seen == valid  # and every negative gets drawn for every anchor
    # hard mining takes the nearest negative for each anchor: the largest of the valid losses, by hand
    hard = sum(math.log1p(math.exp(ap - an)) for ap, an in ((1.1, 3.7), (1.1, 2.6), (3.6, 2.6), (3.6, 6.2))) / 4
    assert max(valid) == pytest.approx(hard, abs=1e-9)
    assert triplet_loss(out, labels, "FFF", mining="hard").item() == pytest.approx(hard, rel=1e-6)
    # the same generator seed gives the same draw
    draws = [triplet_loss(out, labels, "FFF", mining="random", generator=torch.Generator().manual_seed(3)).item()
             for _ in range(2)]
    assert draws[0] == draws[1]


def test_unknown_combo() -> None:
    out = _out([[0.0], [1.0]], [[[0.0], [0.0]]] * 2)
    with pytest.raises(ValueError, match="XYZ"):
        triplet_loss(out, torch.tensor([0, 1]), "XYZ")


def test_center_loss_hand_computed_and_centers_learn() -> None:
    loss = CenterLoss(num_ids=2, dim=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    feats = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    value = loss(feats, torch.tensor([0, 1]))
    assert value.item() == pytest.approx((25 + 1) / 2)  # official: sum of squared distances / B, no 1/2
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    before = loss.centers.detach().clone()
    value.backward()
    opt.step()
    assert not torch.equal(before, loss.centers)
    assert loss(feats, torch.tensor([0, 1])).item() < value.item()


def test_total_weights_and_label_smoothing() -> None:
    torch.manual_seed(0)
    emb = torch.randn(4, 3)
    logits = torch.randn(4, 5)
    out = GraftOutput(emb, emb, logits, emb[:, None].expand(4, 2, 3), torch.randn(4, 2, 3))
    labels = torch.tensor([0, 0, 1, 1])
    cfg = LossConfig(alpha=0.5, beta=0.25, gamma=2.0, label_smoothing=0.1, mining="hard")
    crit = GraftLoss(cfg, num_ids=5, dim=3)
    parts = crit(out, labels)
    ce = F.cross_entropy(logits, labels, label_smoothing=0.1)
    trip = triplet_loss(out, labels, "FFD")
    cent = crit.center(emb, labels)
    assert parts.ce.item() == pytest.approx(ce.item(), rel=1e-6)
    assert parts.total.item() == pytest.approx((0.5 * trip + 0.25 * cent + 2.0 * ce).item(), rel=1e-5)
    # label smoothing really changes CE
    assert ce.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)


def test_center_loss_equals_the_official_formula_on_fixed_inputs() -> None:
    """Nano1337/GraFT loss/reid_loss.py Center_Loss: (||x||^2 + ||c||^2 - 2 x.c) masked to the label, summed, / B."""
    g = torch.Generator().manual_seed(0)
    feats, centers = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 3, 3, 1, 2, 0])
    loss = CenterLoss(num_ids=4, dim=5)
    with torch.no_grad():
        loss.centers.copy_(centers)
    distmat = (feats.pow(2).sum(1, keepdim=True) + centers.pow(2).sum(1)[None, :]) - 2 * feats @ centers.T
    mask = labels[:, None] == torch.arange(4)[None, :]
    official = (distmat * mask).clamp(1e-12, 1e12).sum() / len(labels)
    by_hand = sum(float(((feats[i] - centers[labels[i]]) ** 2).sum()) for i in range(6)) / 6
    assert loss(feats, labels).item() == pytest.approx(official.item(), rel=1e-5)
    assert loss(feats, labels).item() == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize(("ids", "per_anchor"), [([0, 0, 1, 1, 2, 2, 2, 3], 8), ([5, 5, 5, 5, 9, 9, 9, 9], 3),
                                                 ([0, 1, 1, 2], 4)])
def test_random_triplets_are_valid(ids: list[int], per_anchor: int) -> None:
    labels = torch.tensor(ids)
    a, p, n = random_triplets(labels, per_anchor, torch.Generator().manual_seed(1))
    counts = torch.bincount(labels)
    has_pos = [counts[x] > 1 for x in ids]
    assert len(a) == len(p) == len(n) == per_anchor * sum(has_pos)  # every anchor with a positive, T times
    assert torch.equal(labels[a], labels[p]) and bool((a != p).all())  # positive: same id, another image
    assert bool((labels[a] != labels[n]).all())  # negative: another id
    assert torch.equal(a.unique(), torch.tensor([i for i, ok in enumerate(has_pos) if ok]))


def test_random_triplets_cover_every_positive_and_negative() -> None:
    labels = torch.tensor([0] * 8 + [1] * 8 + [2] * 8)  # K = 8 images per id: 7 positives per anchor
    a, p, n = random_triplets(labels, 8, torch.Generator().manual_seed(0))
    pairs_p = {(int(x), int(y)) for x, y in zip(a, p)}
    pairs_n = {(int(x), int(y)) for x, y in zip(a, n)}
    a2, p2, n2 = random_triplets(labels, 400, torch.Generator().manual_seed(1))
    assert len({(int(x), int(y)) for x, y in zip(a2, p2)}) == 24 * 7  # uniform over all positives
    assert len({(int(x), int(y)) for x, y in zip(a2, n2)}) == 24 * 16  # and over all negatives
    assert len(pairs_p) > 24 and len(pairs_n) > 24  # 8 draws per anchor are not one repeated triplet


def test_graft_loss_uses_the_configured_triplets_per_anchor() -> None:
    torch.manual_seed(0)
    emb = torch.randn(8, 3)
    out = GraftOutput(emb, emb, torch.randn(8, 4), emb[:, None].expand(8, 2, 3), torch.randn(8, 2, 3))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    crit = GraftLoss(LossConfig(triplets_per_anchor=5), num_ids=4, dim=3)
    torch.manual_seed(7)
    got = crit(out, labels).triplet
    torch.manual_seed(7)
    want = triplet_loss(out, labels, "FFD", mining="random", per_anchor=5)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert LossConfig().mining == "random" and LossConfig().triplets_per_anchor == 8  # the authors' recipe
