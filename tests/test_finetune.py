"""`finetune` keeps the epoch with the best validation mAP (held-out training ids) and reports the test split
separately; choosing never changes the trajectory it chooses from."""
from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.data.synthetic import write_synthetic
from graft_edge.evaluation import evaluate_embedder, evaluate_val
from graft_edge.model import build_model
from graft_edge.model.embedder import ModelEmbedder
from graft_edge.train import finetune
from tests.conftest import tiny_train_config


@pytest.fixture(scope="module")
def data16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 ids (8 train: 6 for training, 2 held out for validation at 0.25), 2 cameras, 16x32 slots."""
    root = tmp_path_factory.mktemp("data") / "syn16"
    write_synthetic(root, ids=16, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


def _cfg(lr: float = 2e-2):
    """A high constant lr: every epoch moves the weights well away from the previous one."""
    cfg = tiny_train_config()
    return replace(cfg, data=replace(cfg.data, val_fraction=0.25), model=replace(cfg.model, num_ids=6),
                   train=replace(cfg.train, stage2=replace(cfg.train.stage2, lr=lr)))


def _model(cfg):
    torch.manual_seed(0)
    return build_model(cfg.model)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_keeps_the_val_best_epoch_not_the_last(data16: Path, one_thread: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation scores are scripted through the evaluation seam (a tiny model's real ones take a few discrete
    values that tie or not depending on the CPU's kernels); everything else is the real run."""
    finetune_module = importlib.import_module("graft_edge.train.finetune")  # the module (the package exports the function)

    scripted = [0.3, 0.8, 0.5, 0.8]  # epoch 2 is the best; epoch 4 ties it and is later: epoch 2 is kept
    val_queries, states = [], []
    real_val, real_eval = finetune_module.build_val_loaders, finetune_module.evaluate_model

    def spy_val(*args, **kwargs):
        loaders = real_val(*args, **kwargs)
        val_queries.append(loaders[0])
        return loaders

    def scripted_eval(model, query, gallery):
        real = real_eval(model, query, gallery)
        if getattr(query, "loader", query) is not val_queries[-1]:  # validation's batches are ReusedBatches
            return real  # the test split: real numbers
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {**real, "mAP": scripted[len(states) - 1]}

    monkeypatch.setattr(finetune_module, "build_val_loaders", spy_val)
    monkeypatch.setattr(finetune_module, "evaluate_model", scripted_eval)
    cfg = _cfg()
    model, metrics = finetune(_model(cfg), cfg, data16, 4, seed=0)
    assert metrics["val_history"] == scripted and metrics["selected_on"] == "val_mAP" and len(states) == 4
    assert metrics["best_epoch"] == 2 and metrics["val_mAP"] == 0.8
    final = model.state_dict()
    assert all(torch.equal(final[k], states[1][k]) for k in final)  # the weights validated at epoch 2 ...
    assert not all(torch.equal(final[k], states[3][k]) for k in final)  # ... not the last epoch's
    # and they are epoch 2 of the same trajectory: what training for 2 epochs without choosing gives
    monkeypatch.undo()
    at_best, _ = finetune(_model(cfg), cfg, data16, 2, seed=0, select_on_val=False, eval_at_end=False)
    assert _same(model, at_best)
    # the other metrics are that model's: validation from the held-out ids, test from query/gallery
    emb = ModelEmbedder(model)
    val, test = evaluate_val(emb, data16, cfg), evaluate_embedder(emb, data16, batch_size=16)
    assert metrics["val_R1"] == pytest.approx(val["val_R1"]) and metrics["mAP"] == pytest.approx(test["mAP"])
    assert metrics["R1"] == pytest.approx(test["R1"])
    assert metrics["val_num_query"] == val["val_num_query"] == 4 and metrics["num_query"] == test["num_query"] == 8


def test_restoring_keeps_pruned_widths_and_the_model_object(data16: Path, one_thread: None) -> None:
    from graft_edge.compress import PruneSpec, prune_to_target

    cfg = _cfg()
    model = _model(cfg)
    prune_to_target(model, int(0.7 * sum(p.numel() for p in model.parameters())), PruneSpec(steps=1))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    out, metrics = finetune(model, cfg, data16, 3, seed=0, eval_at_end=False)
    assert out is model and {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert "mAP" not in metrics and metrics["best_epoch"] in (1, 2, 3)


@pytest.mark.parametrize("val_fraction, select", [(0.0, True), (0.25, False)])
def test_without_validation_the_last_epoch_is_kept(data16: Path, one_thread: None, val_fraction: float,
                                                   select: bool) -> None:
    cfg = _cfg()
    cfg = replace(cfg, data=replace(cfg.data, val_fraction=val_fraction),
                  model=replace(cfg.model, num_ids=8 if val_fraction == 0 else 6))
    model, metrics = finetune(_model(cfg), cfg, data16, 2, seed=0, select_on_val=select)
    assert "best_epoch" not in metrics and "val_mAP" not in metrics and 0 <= metrics["mAP"] <= 1
    again, _ = finetune(_model(cfg), cfg, data16, 2, seed=0, select_on_val=select, eval_at_end=False)
    assert _same(model, again)



def test_prune_with_val_selection_resumes_to_identical_weights(data16: Path, tmp_path: Path, one_thread: None) -> None:
    """Every step keeps its val-best epoch; a run stopped after step 2 of 3 resumes to the uninterrupted weights,
    and the history records val and test metrics and the kept epoch per step."""
    from graft_edge.checkpoint import read_checkpoint, save_checkpoint
    from graft_edge.workflows.prune import PruneRequest, run_prune

    cfg = _cfg(lr=5e-3)
    src = tmp_path / "dense.pt"
    save_checkpoint(src, _model(cfg), cfg)
    req = PruneRequest(target="75%", steps=3, data=data16, finetune_epochs=2)
    a, c = tmp_path / "a.pt", tmp_path / "c.pt"
    res = run_prune(src, a, req)
    for e in res.new_steps:
        assert e["best_epoch"] in (1, 2) and 0 <= e["val_mAP"] <= 1 and 0 <= e["mAP"] <= 1

    def stop_after_second(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prune(src, c, req, progress=stop_after_second)
    torch.manual_seed(123)  # the global RNG state must not matter
    resumed = run_prune(src, c, req, resume=True)
    sa, sc = read_checkpoint(a).state_dict, read_checkpoint(c).state_dict
    assert resumed.resumed_steps == 2 and all(torch.equal(sa[k], sc[k]) for k in sa)
    assert resumed.history[-1] == res.history[-1]


def test_prune_cli_prints_val_and_test_per_step(data16: Path, tmp_path: Path, one_thread: None) -> None:
    import json

    from typer.testing import CliRunner

    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.cli.main import app

    cfg = _cfg(lr=5e-3)
    src = tmp_path / "dense.pt"
    save_checkpoint(src, _model(cfg), cfg)
    res = CliRunner().invoke(app, ["prune", str(src), "--target", "75%", "--steps", "1", "--data", str(data16),
                                   "--finetune-epochs", "2", "--out", str(tmp_path / "p.pt"), "--json",
                                   str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    (step,) = json.loads((tmp_path / "p.json").read_text())["history"]
    text = " ".join(res.output.split())
    assert ("step 1/1: params" in text and f"val mAP {100 * step['val_mAP']:.2f} R1 {100 * step['val_R1']:.2f} | "
            f"test mAP {100 * step['mAP']:.2f} R1 {100 * step['R1']:.2f} (finetuning epoch {step['best_epoch']} kept: "
            "best val mAP)" in text)
