"""Missing-modality training: the mask draws, a dropped modality's irrelevance, exact resume, DDP positions, teacher."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.checkpoint import read_checkpoint
from graft_edge.config import apply_overrides, config_to_dict, get_preset
from graft_edge.data.sampler import IdentityBatchSampler
from graft_edge.errors import GraftError
from graft_edge.fileio import write_yaml
from graft_edge.model import build_model
from graft_edge.train import finetune, run_training
from graft_edge.train import runner as train_runner
from graft_edge.train.distill import DistillConfig, Distiller
from graft_edge.train.loop import Objective
from graft_edge.train.losses import GraftLoss
from graft_edge.train.modality_dropout import ModalityDropout, draw_presence, kept_subsets
from tests.conftest import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


# ------------------------------------------------------------------ the draws

@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
def test_dropout_never_removes_every_modality_and_follows_its_probability(p: float, m: int) -> None:
    masks = torch.cat([draw_presence(p, m, seed=7, epoch=e, global_batch=b, start=0, count=100)
                       for e in range(4) for b in range(50)])  # 20,000 samples
    n = len(masks)
    assert masks.shape == (n, m) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks.sum(1).min() == 1 if p > 0 else masks.sum(1).min() == m  # never all dropped; p > 0 reaches one
    dropped = masks.sum(1) < m
    assert abs(dropped.float().mean().item() - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12
    if p == 0:
        return
    codes = (masks[dropped] * (2 ** torch.arange(m)).float()).sum(1).long()  # kept subset as a bit code
    counts = torch.bincount(codes, minlength=2**m)
    assert counts[0] == 0 and counts[-1] == 0  # neither nothing nor everything is what a drop keeps
    k, total = 2**m - 2, int(dropped.sum())
    expected = total / k  # every non-empty strict subset as likely
    assert all(abs(int(c) - expected) <= 5 * math.sqrt(expected) for c in counts[1:-1])


def test_a_sample_draws_the_same_mask_whatever_slice_asks_for_it() -> None:
    whole = draw_presence(0.7, 3, seed=1, epoch=2, global_batch=5, start=0, count=32)
    assert torch.equal(draw_presence(0.7, 3, seed=1, epoch=2, global_batch=5, start=10, count=7), whole[10:17])
    assert not torch.equal(draw_presence(0.7, 3, seed=1, epoch=2, global_batch=6, start=0, count=32), whole)
    assert kept_subsets(3).tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1]]
    with pytest.raises(GraftError, match="at least 2 modalities"):
        kept_subsets(1)


@pytest.mark.parametrize("anchor_repeats", [0, 2])
def test_ranks_draw_the_masks_of_their_global_batch_position(anchor_repeats: int) -> None:
    """Two processes together draw exactly the masks one process draws for the same global batches."""
    labels = [i // 4 for i in range(64)]  # 16 ids x 4 images

    def per_rank(world: int) -> list[list[tuple[list[int], torch.Tensor]]]:
        out = []
        for rank in range(world):
            s = IdentityBatchSampler(labels, 4, 2, seed=0, rank=rank, world_size=world, anchor_repeats=anchor_repeats)
            s.set_epoch(3)
            drop = ModalityDropout(0.5, 3, seed=1, sampler=s)
            out.append([(b, drop.mask(k, len(b))) for k, b in enumerate(s.epoch_batches())])
        return out

    one, (r0, r1) = per_rank(1)[0], per_rank(2)
    if anchor_repeats:  # rank r trains on slice r of every global batch
        pairs = [((a[0] + b[0], torch.cat([a[1], b[1]])), g) for a, b, g in zip(r0, r1, one)]
        assert len(pairs) == len(one)
    else:  # rank r trains on global batches r, r + 2, ...
        pairs = [(r[k], one[2 * k + i]) for k in range(len(r0)) for i, r in enumerate((r0, r1))]
    for (batch, mask), (ref_batch, ref_mask) in pairs:
        assert batch == ref_batch and torch.equal(mask, ref_mask)
    assert any((m < 1).any() for _, m in one)


# ------------------------------------------------------------------ the model under a mask

def _batch(cfg, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.model.img_size
    images = {m: torch.randn(8, 3, h, w, generator=g) for m in cfg.model.modalities}
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [1, 1, 1]],
                           dtype=torch.float32)
    return images, present, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_a_dropped_modality_contributes_nothing_its_pixels_can_be_anything() -> None:
    cfg = tiny_train_config()
    cfg = replace(cfg, model=replace(cfg.model, num_ids=4))
    torch.manual_seed(0)
    model = build_model(cfg.model).train()  # dropout in the fusion encoders on: both passes draw the same numbers
    loss = GraftLoss(cfg.train.stage2.loss, 4, model.embed_dim)
    images, present, labels = _batch(cfg)
    wild = {m: x.clone() for m, x in images.items()}
    for i, m in enumerate(cfg.model.modalities):
        gone = present[:, i] == 0
        wild[m][gone] = torch.randn_like(wild[m][gone]) * 1e4 + 123.0  # anything finite
    outs, grads = [], []
    for inputs in (images, wild):
        inputs = {m: x.clone().requires_grad_(True) for m, x in inputs.items()}
        torch.manual_seed(1)
        out = model(inputs, present)
        parts = loss(out, labels)
        parts.total.backward()
        outs.append((out, parts))
        grads.append({m: x.grad for m, x in inputs.items()})
        model.zero_grad()
    (a, pa), (b, pb) = outs
    for field in ("embedding", "neck", "logits"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(pa.total, pb.total)
    for i, m in enumerate(cfg.model.modalities):  # no gradient reaches a dropped modality's pixels
        gone = present[:, i] == 0
        assert torch.equal(grads[0][m][gone], torch.zeros_like(grads[0][m][gone]))
        assert grads[0][m][~gone].abs().sum() > 0
    model.eval()  # and each row is the embedding of its kept modalities alone
    with torch.no_grad():
        masked = model.embed_masked(wild, present)
        for i, row in enumerate(present):
            kept = {m: images[m][i:i + 1] for m, on in zip(cfg.model.modalities, row) if on}
            assert torch.allclose(masked[i], model.embed(kept)[0], atol=1e-5)


def test_the_teacher_sees_every_sensor_the_student_its_dropped_view() -> None:
    cfg = tiny_train_config()
    cfg = replace(cfg, model=replace(cfg.model, num_ids=4))
    torch.manual_seed(0)
    student, teacher = build_model(cfg.model), build_model(cfg.model)
    seen, masks = [], []
    tokens, outputs = teacher.tokens, teacher.outputs
    teacher.tokens = lambda inputs: seen.append(inputs) or tokens(inputs)
    teacher.outputs = lambda f, d, present=None: masks.append(present) or outputs(f, d, present)
    objective = Objective(student, GraftLoss(cfg.train.stage2.loss, 4, student.embed_dim),
                          Distiller(teacher, DistillConfig()))
    images, present, labels = _batch(cfg)
    parts = objective(images, labels, present)
    (inputs,) = seen
    assert set(inputs) == set(cfg.model.modalities) and masks == [None]  # the teacher got no mask: every sensor
    assert all(torch.equal(inputs[m], images[m]) for m in inputs)
    with torch.no_grad():
        t_emb = teacher(images).embedding
    s_out = student.eval()(images, present)
    full = (present.sum(1) == 3)  # the student's dropped rows differ from its every-sensor rows
    assert not torch.allclose(s_out.embedding[~full], student(images).embedding[~full])
    assert parts.distill is not None and parts.distill > 0 and t_emb.shape == s_out.embedding.shape


# ------------------------------------------------------------------ training runs

class _Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("with_teacher", [False, True], ids=["dropout", "dropout+teacher"])
def test_resume_mid_epoch_with_dropout_gives_the_uninterrupted_weights(tiny_data: Path, tmp_path: Path,
                                                                       tiny_checkpoint_4ids: Path, with_teacher: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = str(tiny_checkpoint_4ids) if with_teacher else None
    cfg = tiny_train_config(modality_dropout=0.5, teacher_file=teacher)
    cfg = replace(cfg, train=replace(cfg.train, stage1=replace(cfg.train.stage1, epochs=3)),
                  data=replace(cfg.data, erase=1.0))
    full = run_training(cfg, tiny_data, tmp_path / "full", progress=False, checkpoint_steps=1)
    real = train_runner._on_step

    def stop_after_6(tr, run, info):  # killed right after step 6 (stage 1, epoch 2, batch 2) was saved
        real(tr, run, info)
        if tr.pos.step == 6:
            raise _Stop

    monkeypatch.setattr(train_runner, "_on_step", stop_after_6)
    with pytest.raises(_Stop):
        run_training(cfg, tiny_data, tmp_path / "cut", progress=False, checkpoint_steps=1)
    monkeypatch.undo()
    at_kill = read_checkpoint(tmp_path / "cut" / "last.pt").extra
    assert at_kill["step"] == 6 and at_kill["batch"] == 2 and at_kill["epoch"] == 1
    run_training(cfg, tiny_data, tmp_path / "cut", resume=True, progress=False, checkpoint_steps=1)
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(tmp_path / "cut" / "last.pt")
    assert a.extra["step"] == b.extra["step"] == full.steps == 3 * 4 + 4
    for key, value in a.state_dict.items():
        assert torch.allclose(value.float(), b.state_dict[key].float(), atol=1e-6), key
    plain = run_training(replace(cfg, train=replace(cfg.train, modality_dropout=0.0)), tiny_data, tmp_path / "plain",
                         progress=False)  # the masks changed the training (the equality above is not vacuous)
    p = read_checkpoint(plain.run_dir / "last.pt").state_dict
    assert not torch.allclose(p["head.classifier.weight"], a.state_dict["head.classifier.weight"])


def test_teacher_file_of_other_sensors_or_ids_is_refused(tiny_data: Path, tmp_path: Path,
                                                         tiny_checkpoint_4ids: Path) -> None:
    from graft_edge.checkpoint import save_checkpoint

    base = tiny_train_config(teacher_file=str(tiny_checkpoint_4ids))
    cases = [(replace(base, model=replace(base.model, modalities=("rgb", "nir"))), "its modalities is rgb,nir,tir but the student's is rgb,nir"),
             (replace(base, data=replace(base.data, val_fraction=0.25)), "its classifier width is 4 but the student's is 3"),
             (replace(base, train=replace(base.train, teacher_file=str(tmp_path / "nope.pt"))), "no such checkpoint")]
    for cfg, needle in cases:
        with pytest.raises(GraftError, match=needle):
            run_training(cfg, tiny_data, tmp_path / "run", progress=False, overwrite=True)
    other = replace(base, model=replace(base.model, num_ids=4), data=replace(base.data, val_fraction=0.1, val_seed=3))
    save_checkpoint(tmp_path / "split.pt", build_model(other.model), other)
    cfg = replace(base, train=replace(base.train, teacher_file=str(tmp_path / "split.pt")))
    with pytest.raises(GraftError, match="its data.val_fraction is 0.1"):
        run_training(cfg, tiny_data, tmp_path / "run2", progress=False)


@pytest.mark.slow
def test_finetuning_a_robust_model_keeps_dropping_sensors(tiny_data: Path, tiny_checkpoint_4ids: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Pruning's finetuning (`finetune`) of a model whose config has modality dropout: masks drawn, seeded."""
    from graft_edge.checkpoint import load_model
    from graft_edge.train import loop

    drawn = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda run, images, labels, present=None: (
        drawn.append(present), real(run, images, labels, present))[1])
    cfg = tiny_train_config(modality_dropout=0.5)
    weights = []
    for _ in range(2):
        model = load_model(tiny_checkpoint_4ids)[0]
        finetune(model, cfg, tiny_data, epochs=1, eval_at_end=False, seed=5, teacher=load_model(tiny_checkpoint_4ids)[0])
        weights.append(model.head.classifier.weight.detach().clone())
    assert len(drawn) == 8 and all(d is not None and d.shape == (4, 3) for d in drawn)
    assert any((d < 1).any() for d in drawn) and torch.equal(drawn[0], drawn[4])
    assert torch.equal(weights[0], weights[1])


WORKER = """
import sys, torch
from graft_edge.config import config_from_dict
from graft_edge.fileio import read_yaml
from graft_edge.train import loop, runner
masks = []
real_step = loop.train_step
def spy_step(run, images, labels, present=None):
    masks.append(present.clone())
    return real_step(run, images, labels, present)
loop.train_step = spy_step
real = runner._finish
def spy(tr):
    torch.save({"state": {k: v.clone() for k, v in tr.model.state_dict().items()}, "masks": masks},
               f"{sys.argv[3]}/rank{tr.env.rank}.pt")
    return real(tr)
runner._finish = spy
runner.run_training(config_from_dict(read_yaml(sys.argv[1])), sys.argv[2], sys.argv[3], max_steps=2, progress=False)
"""


@pytest.mark.slow
def test_ddp_with_dropout_ranks_stay_in_step_and_draw_their_slices(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(modality_dropout=0.5)
    cfg = replace(cfg, data=replace(cfg.data, anchor_repeats=2))  # each global batch is cut into the 2 ranks' slices
    write_yaml(tmp_path / "cfg.yaml", config_to_dict(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "worker.py"), str(tmp_path / "cfg.yaml"), str(tiny_data), str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    sampler = IdentityBatchSampler([0] * 4 + [1] * 4 + [2] * 4 + [3] * 4, 2, 2, anchor_repeats=2)
    for step, (a, b) in enumerate(zip(r0["masks"], r1["masks"])):  # the global batch's masks, one slice each
        stage_epoch = 0 if step < 2 else 100_000  # runner's sampler epoch of stage 1 / stage 2, epoch 0
        ref = draw_presence(0.5, 3, cfg.train.seed, stage_epoch, step % 2, 0, sampler.P * sampler.K)
        assert torch.equal(torch.cat([a, b]), ref)


def test_robust_presets_and_bad_values() -> None:
    assert get_preset("synthetic-robust").train.modality_dropout == 0.5
    assert get_preset("rgbnt100-robust").train.modality_dropout == 0.5
    assert get_preset("synthetic").train.modality_dropout == 0.0 == get_preset("rgbnt100").train.modality_dropout
    assert get_preset("synthetic-robust").model == get_preset("synthetic").model
    cases = [(["train.modality_dropout=1.5"], "train.modality_dropout=1.5: expected a finite number >= 0 and <= 1"),
             (["train.modality_dropout=0.3", "model.modalities=nir"], "has a single modality"),
             (["train.modality_dropout=0.3", "model.fusion=cls"], "only fusion=token models can")]
    for sets, needle in cases:
        with pytest.raises(GraftError, match=needle):
            apply_overrides(get_preset("synthetic"), sets)
