"""Several artefacts scored in one pass over the images (evaluation.evaluate_embedders), and validation batches
decoded once for every finetuning epoch (data.reuse.ReusedBatches): the same numbers as one at a time, fewer reads."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from graft_edge.checkpoint import load_model
from graft_edge.data.dataset import ReidDataset
from graft_edge.data.reuse import ReusedBatches
from graft_edge.evaluation import evaluate_embedder, evaluate_embedders, evaluate_val
from graft_edge.model.embedder import ModelEmbedder


class Failing:
    """An artefact that breaks on its second batch."""

    def __init__(self, inner: Any) -> None:
        self.info, self.inner, self.calls = inner.info, inner, 0

    def embed(self, batch: dict) -> Any:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("runtime fell over")
        return self.inner.embed(batch)


def _embedders(ckpt: Path) -> tuple[Any, Any, Any]:
    model, cfg = load_model(ckpt)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ModelEmbedder(model.eval()), ModelEmbedder(other.eval()), cfg.config


def test_one_pass_scores_every_artefact_as_one_at_a_time(tiny_val_inputs: tuple[Path, Path], one_thread: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, data = tiny_val_inputs
    a, b, cfg = _embedders(ckpt)
    single = {k: {**evaluate_embedder(e, data, batch_size=8), **evaluate_val(e, data, cfg, batch_size=8)}
              for k, e in (("a", a), ("b", b))}
    assert single["a"]["mAP"] != single["b"]["mAP"]  # two different models
    reads = []
    original = ReidDataset.__getitem__
    monkeypatch.setattr(ReidDataset, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    both = evaluate_embedders({"a": a, "b": b, "bad": Failing(a)}, data, cfg, batch_size=8)
    for k in ("a", "b"):
        assert both[k] == pytest.approx(single[k])
    assert isinstance(both["bad"], RuntimeError) and "fell over" in str(both["bad"])
    images = sum(single["a"][k] for k in ("num_query", "num_gallery", "val_num_query", "val_num_gallery"))
    assert len(reads) == images  # every image read once for all three artefacts
    assert evaluate_embedders({"a": a}, data, None, batch_size=8)["a"] == pytest.approx(
        evaluate_embedder(a, data, batch_size=8))  # no cfg: test only


def test_reused_batches_decode_once_and_stream_past_the_cap() -> None:
    batches = [({"rgb": torch.full((2, 3, 4, 4), float(i))}, torch.tensor([i, i]), torch.tensor([0, 1]))
               for i in range(3)]
    passes = []

    class Loader:
        dataset = "ds"

        def __iter__(self):
            passes.append(1)
            return iter(batches)

        def __len__(self) -> int:
            return len(batches)

    kept = ReusedBatches(Loader())
    first, second = list(kept), list(kept)
    assert len(passes) == 1 and [b[1].tolist() for b in second] == [[0, 0], [1, 1], [2, 2]]
    assert all(x is y for x, y in zip(first, second)) and kept.dataset == "ds" and len(kept) == 3
    passes.clear()
    small = ReusedBatches(Loader(), max_bytes=2 * 3 * 4 * 4 * 4 + 1)  # one batch fits, two do not
    assert [b[1][0].item() for b in small] == [0, 1, 2] and [b[1][0].item() for b in small] == [0, 1, 2]
    assert small.streams and small.kept is None and len(passes) == 2
