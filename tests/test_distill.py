"""Knowledge distillation in the prune–finetune loop: the loss on hand numbers, a frozen teacher that is never
saved, resumes that match uninterrupted runs, and the run identity."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from graft_edge.checkpoint import read_checkpoint
from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.model import build_model
from graft_edge.model.graft import GraftOutput
from graft_edge.train import finetune
from graft_edge.train.distill import DistillConfig, Distiller, distill_loss, embedding_distill, logits_distill
from graft_edge.train.distributed import DistEnv
from graft_edge.train.loop import make_stage
from graft_edge.workflows.prune import PruneRequest, partial_path, run_prune

runner = CliRunner()


def _out(embedding: list[list[float]], logits: list[list[float]]) -> GraftOutput:
    e, lg = torch.tensor(embedding), torch.tensor(logits)
    return GraftOutput(e, e.clone(), lg, e[:, None], e[:, None])


# ---------------------------------------------------------------- the loss on hand-computed inputs

@pytest.mark.parametrize("kind, expected", [("cosine", (1.0 + 0.0) / 2), ("mse", (2.0 + 0.0) / 2)])
def test_embedding_term_on_hand_numbers(kind: str, expected: float) -> None:
    # row 1: orthogonal (cos 0, normalised distance² 2); row 2: same direction, other length (cos 1, distance 0)
    s, t = torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [6.0, 8.0]])
    assert embedding_distill(s, t, kind).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_logits_term_is_kl_at_temperature_scaled_by_t_squared(T: float) -> None:
    # teacher logits/T = [ln 3, 0] -> p_t = [3/4, 1/4]; student uniform -> KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    s, t = torch.zeros(1, 2), torch.tensor([[T * math.log(3.0), 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert logits_distill(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-5)
    assert logits_distill(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_distill_loss_weights_its_terms() -> None:
    T = 2.0
    student = _out([[1.0, 0.0]], [[0.0, 0.0]])
    teacher = _out([[0.0, 1.0]], [[T * math.log(3.0), 0.0]])
    cfg = DistillConfig(embed_weight=0.5, logits_weight=3.0, temperature=T)
    parts = distill_loss(student, teacher, cfg)
    kl = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert parts.embed.item() == pytest.approx(1.0) and parts.logits.item() == pytest.approx(kl, rel=1e-5)
    assert parts.total.item() == pytest.approx(0.5 * 1.0 + 3.0 * kl, rel=1e-5)


@pytest.mark.parametrize("change, option", [({"temperature": 0.0}, "--distill-temperature"),
                                            ({"embed_weight": -1.0}, "--distill-embed-weight"),
                                            ({"embed_loss": "l1"}, "--distill-embed-loss"),
                                            ({"teacher": "dense"}, "--distill-teacher")])
def test_bad_distill_config_names_its_option(change: dict, option: str) -> None:
    with pytest.raises(GraftError, match=option):
        DistillConfig(**change).validated()


# ---------------------------------------------------------------- the teacher: frozen, never saved

def test_teacher_gets_no_gradient_and_is_not_part_of_the_student(tiny_data: Path, tiny_checkpoint_4ids: Path) -> None:
    ckpt = read_checkpoint(tiny_checkpoint_4ids)
    torch.manual_seed(1)
    student = build_model(ckpt.config.model)
    teacher = build_model(ckpt.config.model)  # another init: the terms are nonzero
    before = copy.deepcopy(teacher.state_dict())
    run = make_stage(student, ckpt.config.train.stage2, 4, DistEnv(device="cpu"),
                     distiller=Distiller(teacher, DistillConfig()))
    assert run.objective.state_dict().keys() == {*(f"model.{k}" for k in student.state_dict()),
                                                  *(f"criterion.{k}" for k in run.criterion.state_dict())}
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    student0 = copy.deepcopy(student.state_dict())
    _, metrics = finetune(student, ckpt.config, tiny_data, 1, eval_at_end=False, seed=3, teacher=teacher)
    assert metrics["distill"] > 0  # the teacher terms were in the loss
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student0[k], v) for k, v in student.state_dict().items())


def test_distillation_changes_finetuning(tiny_data: Path, tiny_checkpoint_4ids: Path) -> None:
    ckpt = read_checkpoint(tiny_checkpoint_4ids)
    torch.manual_seed(1)
    base, teacher = build_model(ckpt.config.model), build_model(ckpt.config.model)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    finetune(a, ckpt.config, tiny_data, 1, eval_at_end=False, seed=3)
    finetune(b, ckpt.config, tiny_data, 1, eval_at_end=False, seed=3, teacher=teacher)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ---------------------------------------------------------------- the prune run: saved, resumed, identified

def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint(a).state_dict, read_checkpoint(b).state_dict
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("teacher", ["previous", "source"])
def test_resume_mid_distillation_gives_the_uninterrupted_weights(tiny_data: Path, tmp_path: Path, tiny_checkpoint_4ids: Path,
                                                                 teacher: str) -> None:
    req = PruneRequest(target="70%", steps=3, data=tiny_data, finetune_epochs=1, evaluate=False, distill=True,
                       distill_config=DistillConfig(teacher=teacher))
    plain = replace(req, distill=False)
    a, c, d = tmp_path / "a.pt", tmp_path / "c.pt", tmp_path / "d.pt"
    res = run_prune(tiny_checkpoint_4ids, a, req)
    run_prune(tiny_checkpoint_4ids, d, plain)
    assert not _same_weights(a, d)  # the teacher took part
    saved = read_checkpoint(a)
    assert saved.state_dict.keys() == res.model.state_dict().keys()  # the student's tensors only
    assert "teacher" not in saved.extra and not any("teacher" in k for k in saved.state_dict)

    def stop_after_second(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_checkpoint_4ids, c, req, progress=stop_after_second)
    part = read_checkpoint(partial_path(c))
    assert part.extra["prune_run"]["distill"]["teacher"] == teacher
    assert set(part.state_dict) == set(saved.state_dict)  # the partial holds the student alone too
    torch.manual_seed(789)
    res = run_prune(tiny_checkpoint_4ids, c, req, resume=True)
    assert res.resumed_steps == 2 and _same_weights(a, c)


def test_resume_with_other_distill_settings_is_refused(tiny_data: Path, tmp_path: Path, tiny_checkpoint_4ids: Path) -> None:
    req = PruneRequest(target="70%", steps=2, data=tiny_data, finetune_epochs=1, evaluate=False)
    assert req.validated().distilling  # on by default for structured pruning with finetuning
    out = tmp_path / "p.pt"

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_checkpoint_4ids, out, req, progress=stop)
    for other in (replace(req, distill=False), replace(req, distill_config=DistillConfig(temperature=2.0))):
        with pytest.raises(GraftError, match="distill differs"):
            run_prune(tiny_checkpoint_4ids, out, other, resume=True)


@pytest.mark.parametrize("method, epochs, distill, expected", [
    ("structured", 1, None, True), ("structured", 0, None, False), ("unstructured", 1, None, False),
    ("unstructured", 1, True, True), ("structured", 1, False, False)])
def test_distillation_default(method: str, epochs: int, distill: bool | None, expected: bool, tiny_data: Path) -> None:
    req = PruneRequest(target="70%", method=method, data=tiny_data, finetune_epochs=epochs, distill=distill)
    assert req.validated().distilling is expected


def test_cli_distill_options(tiny_data: Path, tiny_checkpoint_4ids: Path, tmp_path: Path) -> None:
    base = ["prune", str(tiny_checkpoint_4ids), "--out", str(tmp_path / "p.pt"), "--target", "80%", "--data", str(tiny_data)]
    res = runner.invoke(app, [*base, "--distill"])
    assert res.exit_code == 2 and "--distill needs --finetune-epochs" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, [*base, "--finetune-epochs", "1", "--distill-temperature", "0"])
    assert res.exit_code == 2 and "--distill-temperature 0.0" in res.output, res.output
    res = runner.invoke(app, [*base, "--finetune-epochs", "1", "--steps", "1", "--distill-embed-loss", "mse",
                              "--distill-temperature", "2"])
    assert res.exit_code == 0 and "with distillation" in res.output, res.output


def test_teacher_file_is_the_source_teacher_of_a_one_cut_run(tiny_data: Path, tmp_path: Path,
                                                             tiny_checkpoint_4ids: Path) -> None:
    # a chain of one-cut runs (the size sweep): level 2 starts from level 1's result, but distils from the dense
    # model when given it as teacher_file; without it the "source" teacher is level 1's result itself
    level1 = tmp_path / "l1.pt"
    run_prune(tiny_checkpoint_4ids, level1, PruneRequest(target="90%", steps=1))
    req = PruneRequest(target="80%", steps=1, data=tiny_data, finetune_epochs=1, evaluate=False, distill=True,
                       distill_config=DistillConfig(teacher="source"))
    own, dense = tmp_path / "own.pt", tmp_path / "dense.pt"
    run_prune(level1, own, req)
    run_prune(level1, dense, replace(req, teacher_file=tiny_checkpoint_4ids))
    assert not _same_weights(own, dense)  # another teacher, other weights
    with pytest.raises(GraftError, match="teacher .* does not exist"):
        run_prune(level1, tmp_path / "x.pt", replace(req, teacher_file=tmp_path / "missing.pt"))


# ---------------------------------------------------------------- teachers of other identities are refused up front

def _teacher(tmp_path: Path, name: str, **changes) -> Path:
    """tiny_checkpoint_4ids's model with model/data config fields changed."""
    from graft_edge.checkpoint import save_checkpoint
    from tests.conftest import tiny_train_config

    cfg = tiny_train_config()
    model_changes = {k: v for k, v in changes.items() if k in ("num_ids", "modalities")}
    data_changes = {k: v for k, v in changes.items() if k not in model_changes}
    cfg = replace(cfg, model=replace(cfg.model, **{"num_ids": 4, **model_changes}), data=replace(cfg.data, **data_changes))
    torch.manual_seed(1)
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, build_model(cfg.model), cfg)
    return path


@pytest.mark.parametrize("name, changes, needle", [
    ("wider", {"num_ids": 6}, "classifier width is 6 but the student's is 4"),
    ("other-split", {"val_seed": 3}, "data.val_seed is 3 but the student's is 0"),
    ("held-out", {"val_fraction": 0.25}, "data.val_fraction is 0.25 but the student's is 0.0"),
    ("two-sensors", {"modalities": ("rgb", "nir")}, "modalities is rgb,nir but the student's is rgb,nir,tir"),
])
def test_a_teacher_of_other_identities_is_refused_before_any_work(tiny_data: Path, tmp_path: Path,
                                                                  tiny_checkpoint_4ids: Path, name: str,
                                                                  changes: dict, needle: str) -> None:
    teacher = _teacher(tmp_path, name, **changes)
    out = tmp_path / "p.pt"
    req = PruneRequest(target="80%", steps=1, data=tiny_data, finetune_epochs=1, evaluate=False,
                       teacher_file=teacher)
    with pytest.raises(GraftError) as info:
        run_prune(tiny_checkpoint_4ids, out, req)
    message = str(info.value)
    assert needle in message and str(teacher) in message and "\n" not in message
    assert not out.exists() and not partial_path(out).exists()


def test_finetune_refuses_a_teacher_of_another_width(tiny_data: Path) -> None:
    from tests.conftest import tiny_train_config

    cfg = tiny_train_config()
    torch.manual_seed(0)
    student = build_model(replace(cfg.model, num_ids=4))
    teacher = build_model(replace(cfg.model, num_ids=6))
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(GraftError, match="classifier width is 6 but the student's is 4"):
        finetune(student, cfg, tiny_data, 1, teacher=teacher)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # refused before any step
