"""Unstructured (global L1) and 2:4 pruning: exact nonzero counts, the N:M pattern, masks through finetuning."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from graft_edge.checkpoint import load_model, save_checkpoint
from graft_edge.compress import (
    PruneSpec,
    SemiStructuredPruner,
    UnstructuredPruner,
    get_method,
    nm_violations,
    prune_to_target,
    sparse_targets,
)
from graft_edge.config import get_preset
from graft_edge.errors import GraftError
from graft_edge.model import build_model, embedding_params
from tests.conftest import tiny_config


def _model(cfg=None, seed: int = 0):
    torch.manual_seed(seed)
    cfg = cfg or get_preset("synthetic")
    return build_model(cfg.model).eval(), cfg


def _fake_finetune(m, after_step, steps: int = 1):
    """A few optimiser steps that move every weight (zeros included), calling after_step like train.finetune."""
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    h, w = m.cfg.img_size
    for _ in range(steps):
        out = m({k: torch.randn(2, 3, h, w) for k in m.modalities})
        loss = out.embedding.pow(2).mean() + out.logits.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(m)
    m.eval()
    return {"mAP": 0.4, "R1": 0.6}


def _no_parametrizations(model) -> bool:
    return not any(parametrize.is_parametrized(mod) for mod in model.modules())


@pytest.mark.parametrize("cfg_fn, frac, steps", [
    (lambda: get_preset("synthetic"), 0.6, None), (lambda: get_preset("synthetic"), 0.45, 3),
    (lambda: tiny_config(("rgb", "nir")), 0.7, None),
])
def test_unstructured_exact_nonzero_count(cfg_fn, frac: float, steps) -> None:
    model, cfg = _model(cfg_fn())
    dense_keys = {k: v.shape for k, v in model.state_dict().items()}
    n0 = embedding_params(model)
    target = int(frac * embedding_params(model, nonzero=True))
    model, arch, history = prune_to_target(model, target, PruneSpec("unstructured", steps=steps))
    assert embedding_params(model, nonzero=True) == target
    assert embedding_params(model) == n0 and arch is None  # same shapes: zeros shrink nothing
    assert {k: v.shape for k, v in model.state_dict().items()} == dense_keys
    assert _no_parametrizations(model)
    assert len(history) == (steps or 1) and history[-1]["params_nonzero"] == target


def test_unstructured_is_global_magnitude() -> None:
    model, cfg = _model()
    before = {n: p.detach().abs().clone() for n, p in sparse_targets(model).items()}
    model, _, _ = prune_to_target(model, int(0.6 * embedding_params(model, nonzero=True)), PruneSpec("unstructured"))
    after = sparse_targets(model)
    pruned = torch.cat([before[n][after[n] == 0] for n in before])
    kept = torch.cat([before[n][after[n] != 0] for n in before])
    assert pruned.max() <= kept.min()  # one threshold over all layers
    # only the backbone's qkv/proj/fc1/fc2 weights lose entries
    names = set(sparse_targets(model))
    for n, p in model.named_parameters():
        if n not in names and not n.startswith("head."):
            assert n.endswith("bias") or int(torch.count_nonzero(p)) == p.numel(), n


def test_unstructured_ties_still_exact() -> None:
    model, _ = _model()
    with torch.no_grad():
        for p in sparse_targets(model).values():
            p.copy_(torch.sign(p) * 0.5)  # every magnitude equal
    pruner = UnstructuredPruner(model)
    total, nonzero = pruner.remaining(), embedding_params(model, nonzero=True)
    pruner.step(nonzero - 1234)  # the shared step protocol: prune down to a count
    assert pruner.remaining() == total - 1234 and embedding_params(model, nonzero=True) == nonzero - 1234
    assert sum(int((p == 0).sum()) for p in sparse_targets(model).values()) == 1234


def test_unstructured_masks_survive_finetune_and_reload(tmp_path) -> None:
    model, cfg = _model()
    target = int(0.5 * embedding_params(model, nonzero=True))
    model, arch, history = prune_to_target(model, target, PruneSpec("unstructured", steps=2), finetune_fn=_fake_finetune)
    assert embedding_params(model, nonzero=True) <= target  # revived zero-init biases are trimmed back
    assert embedding_params(model, nonzero=True) >= 0.98 * target
    assert [e["step"] for e in history] == [1, 2] and history[-1]["mAP"] == 0.4
    zeros = {n: (p == 0).clone() for n, p in sparse_targets(model).items()}
    path = save_checkpoint(tmp_path / "u.pt", model, cfg, arch=arch, history=history)
    loaded, ckpt = load_model(path)
    assert _no_parametrizations(loaded) and ckpt.history[-1]["method"] == "unstructured"
    for n, p in sparse_targets(loaded).items():
        assert torch.equal(p == 0, zeros[n])


def test_unstructured_floor() -> None:
    model, cfg = _model()
    floor = get_method("unstructured").floor(model)
    assert floor == embedding_params(model, nonzero=True) - sum(p.numel() for p in sparse_targets(model).values())
    with pytest.raises(GraftError, match="smallest size unstructured"):
        prune_to_target(model, floor - 1, PruneSpec("unstructured"))


@pytest.mark.parametrize("finetune", [False, True])
def test_two_four_pattern_holds_on_every_weight(finetune: bool) -> None:
    model, cfg = _model()
    model, arch, history = prune_to_target(model, None, PruneSpec("2:4"), finetune_fn=_fake_finetune if finetune else None)
    assert nm_violations(model) == {}
    for name, p in sparse_targets(model).items():
        groups = (p.detach().reshape(-1, 4) != 0).sum(1)
        assert int(groups.max()) <= 2, name
        assert int(torch.count_nonzero(p)) == p.numel() // 2, name  # random init: exactly 2 of 4 survive
    assert arch is None and len(history) == 1 and history[0]["method"] == "2:4"
    assert history[0]["params_nonzero"] == embedding_params(model, nonzero=True)
    assert _no_parametrizations(model)


def test_two_four_keeps_the_largest_two() -> None:
    model, _ = _model()
    w = sparse_targets(model)["backbone.blocks.0.mlp.fc1.weight"]
    with torch.no_grad():
        w[0, :4] = torch.tensor([0.1, -3.0, 2.0, 0.5])
    SemiStructuredPruner(model).step()
    assert w[0, :4].tolist() == [0.0, -3.0, 2.0, 0.0]


def test_two_four_target_checks() -> None:
    model, cfg = _model()
    size = get_method("2:4").floor(model)
    with pytest.raises(GraftError, match="unreachable by 2:4"):
        prune_to_target(model, size - 1, PruneSpec("2:4"))
    model, _, history = prune_to_target(model, size + 10, PruneSpec("2:4"))
    assert embedding_params(model, nonzero=True) == size and history[0]["target"] == size + 10
