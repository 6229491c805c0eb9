"""A resumable prune run: a checkpoint in, a pruned checkpoint out, `OUT.partial` after every finished step.

What `graft-edge prune` does, as a library call::

    from graft_edge.workflows.prune import PruneRequest, run_prune
    result = run_prune("best.pt", "pruned.pt", PruneRequest(target="60M", data="data/", finetune_epochs=1))

A run killed between steps continues from its last finished step with `resume=True`; the partial
checkpoint records the request, and a resume with another source or request is refused.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from graft_edge.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from graft_edge.compress import ATTN_UNITS, PruneMethod, PruneSpec, check_compatible, get_method, prune_to_target
from graft_edge.compress.targets import DEFAULT_FRACTION
from graft_edge.data.layouts import dataset_fingerprint
from graft_edge.errors import GraftError
from graft_edge.evaluation import evaluate_test_and_val
from graft_edge.fileio import sha256_file
from graft_edge.model.arch import extract_arch
from graft_edge.model.embedder import ModelEmbedder
from graft_edge.outdir import OutputLock, clean_stale_temps
from graft_edge.train import finetune
from graft_edge.train.distill import DistillConfig, check_teacher, config_identity, model_identity

# identity of a run: a partial checkpoint is only resumed when these match (every option that changes the result)
RUN_KEYS = ("source_sha256", "method", "target", "schedule", "round_to", "attn_unit", "fraction", "finetune_epochs",
            "data_fingerprint", "distill", "seed_offset")


def partial_path(out: str | Path) -> Path:
    """Where an unfinished run keeps its last finished step: OUT.partial beside OUT."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


@dataclass(frozen=True)
class PruneRequest:
    """What to prune to and how (the `prune` command's options, as data)."""

    target: str | int | None = None  # 60M, 60000000, 60% (of the current count); 2:4: optional upper bound
    method: PruneMethod | str = "structured"  # structured | unstructured | 2:4 (a name is parsed by validated())
    steps: int | None = None  # None: ~`fraction` of the remaining size per step with finetuning, else 1
    round_to: int = 8  # structured channel widths are multiples of this
    attn_unit: str = "heads"  # structured attention unit: heads | head_dims
    fraction: float = DEFAULT_FRACTION
    data: str | Path | None = None  # finetune (finetune_epochs > 0) or just evaluate after every step
    finetune_epochs: int = 0
    device: str = "cpu"  # finetuning device
    evaluate: bool = True  # mAP after every step on --data (recorded in the history); False: finetune only
    distill: bool | None = None  # teacher terms in the finetuning loss; None: on for structured (with finetuning)
    distill_config: DistillConfig = DistillConfig()
    seed_offset: int = 0  # finetuning seeds from cfg.train.seed + this (repeats of one frontier with other seeds)
    # the "source" teacher from this checkpoint instead of the run's source (a chain of one-cut runs, e.g. the size
    # sweep, distils every level from its dense model); None: the run's source
    teacher_file: str | Path | None = None

    @property
    def source_teacher_file(self) -> Path | None:
        """The checkpoint that teaches in place of the run's source ("source" teacher with a teacher_file)."""
        if self.distilling and self.teacher_file is not None and self.distill_config.teacher == "source":
            return Path(self.teacher_file)
        return None

    @property
    def distilling(self) -> bool:
        """Whether finetuning distils from a teacher (needs finetuning; default on for structured pruning)."""
        wanted = get_method(self.method).name == "structured" if self.distill is None else self.distill
        return bool(wanted) and self.finetune_epochs > 0

    def validated(self) -> PruneRequest:
        """A checked copy with normalised names; GraftError naming the first bad option."""
        method = get_method(self.method)
        if self.target is None and method.name != "2:4":
            raise GraftError(f"--target is required for {method.name} pruning (e.g. --target 60M or --target 60%)")
        if self.steps is not None and self.steps < 1:
            raise GraftError(f"--steps {self.steps}: expected a positive integer")
        if self.finetune_epochs < 0:
            raise GraftError(f"--finetune-epochs {self.finetune_epochs}: expected 0 or more")
        if self.finetune_epochs > 0 and self.data is None:
            raise GraftError("--finetune-epochs needs --data ROOT (the dataset to finetune on)")
        if self.data is not None and not Path(self.data).is_dir():
            raise GraftError(f"--data {self.data} is not a directory")
        if self.round_to < 1:
            raise GraftError(f"--round-to {self.round_to}: expected a positive integer")
        if not 0 < self.fraction < 1:
            raise GraftError(f"--fraction {self.fraction}: expected a number in (0, 1)")
        unit = self.attn_unit.replace("-", "_")
        if unit not in ATTN_UNITS:
            raise GraftError(f"--attn-unit {self.attn_unit!r}: expected heads or head-dims")
        if self.distill and self.finetune_epochs == 0:
            raise GraftError("--distill needs --finetune-epochs of 1 or more (the teacher guides finetuning)")
        self.distill_config.validated()
        if self.teacher_file is not None and not Path(self.teacher_file).is_file():
            raise GraftError(f"distillation teacher {self.teacher_file} does not exist")
        if self.seed_offset < 0:
            raise GraftError(f"seed offset {self.seed_offset}: expected 0 or more")
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise GraftError(f"--device {self.device}: no CUDA GPU is available to PyTorch here")
        return replace(self, method=method, attn_unit=unit)


@dataclass
class PruneResult:
    """The pruned model as written, and what the run did."""

    out: Path
    method: PruneMethod
    model: nn.Module
    arch: dict[str, Any] | None
    history: list[dict[str, Any]]  # the checkpoint's whole history (earlier runs included)
    new_steps: list[dict[str, Any]]  # the entries this call added
    target: int | None
    schedule: list[int]
    start_size: int
    resumed_steps: int = 0


def _distill_record(req: PruneRequest) -> dict[str, Any] | None:
    """The run identity's distillation part (with the teacher file's hash when it is not the run's source)."""
    if not req.distilling:
        return None
    rec = req.distill_config.as_record()
    if req.source_teacher_file is not None:
        rec["teacher_sha256"] = sha256_file(req.source_teacher_file)
    return rec


def _checkpoint_identity(path: Path) -> dict[str, Any]:
    """A checkpoint's classifier width (from its weights), modalities and identity split, for `check_teacher`."""
    ck = read_checkpoint(path)
    ident = config_identity(ck.config)
    weight = ck.state_dict.get("head.classifier.weight")
    if weight is not None:
        ident["classifier width"] = int(weight.shape[0])
    return ident


class Teacher:
    """The distillation teacher of the next finetuning: the model before the cut ("previous") or the source.

    Rebuilt from what a step starts from (the source, or OUT.partial on resume), so a resumed run distils
    from the same weights as an uninterrupted one. Held here, never in the student or its checkpoint.
    """

    def __init__(self, source: nn.Module, start: nn.Module, cfg: DistillConfig) -> None:
        self.cfg = cfg
        self.model = copy.deepcopy(source if cfg.teacher == "source" else start)

    def step_done(self, model: nn.Module) -> None:
        """After a finished step: with "previous", that step's result teaches the next one."""
        if self.cfg.teacher == "previous":
            self.model = copy.deepcopy(model)


def _finetune_fn(cfg: Any, req: PruneRequest, first_step: int = 0,
                 teacher: Teacher | None = None) -> Callable[[nn.Module, Any], Any] | None:
    """Finetune (and evaluate, unless told not to) after every step when --data is given.

    Finetuning keeps its best epoch on the validation split (when the config holds one out); the test split is
    evaluated on that model and only recorded. Without finetuning both splits are evaluated.

    Step N's finetuning is seeded from (cfg.train.seed + req.seed_offset, N), so a run resumed after step N-1 repeats
    exactly what the uninterrupted run did. With a `teacher` the finetuning distils from it.
    """
    if req.data is None or (req.finetune_epochs == 0 and not req.evaluate):
        return None
    step = [first_step]

    def finetune_fn(m: nn.Module, after_step: Any) -> Any:
        step[0] += 1
        if req.finetune_epochs > 0:
            return finetune(m, cfg, req.data, req.finetune_epochs, after_step=after_step, eval_at_end=req.evaluate,
                            seed=(int(cfg.train.seed) + req.seed_offset) * 10_007 + step[0],
                            teacher=teacher.model if teacher is not None else None, distill=req.distill_config)
        m.eval()
        return evaluate_test_and_val(ModelEmbedder(m), req.data, cfg)

    return finetune_fn


def _run_state(model_path: Path, req: PruneRequest, target: int | None, schedule: list[int],
               start_size: int) -> dict[str, Any]:
    """What OUT.partial records of its run: the identity (RUN_KEYS) and the progress."""
    return {
        "source": str(model_path), "source_sha256": sha256_file(model_path), "method": req.method.name,
        "target": target, "schedule": [int(t) for t in schedule], "round_to": int(req.round_to), "attn_unit": req.attn_unit,
        "fraction": float(req.fraction), "finetune_epochs": int(req.finetune_epochs),
        "data": str(Path(req.data).resolve()) if req.data else None,
        "data_fingerprint": dataset_fingerprint(req.data) if req.data else None,
        "start_size": start_size, "done": 0, "distill": _distill_record(req),
        "seed_offset": int(req.seed_offset) or None,  # None (not 0): partials written before seeds stay resumable
    }


def _differing_key(saved: dict[str, Any], state: dict[str, Any]) -> str | None:
    """The first identity key a partial's run and this request disagree on, described; None when they match.

    A partial written before the data fingerprint was recorded is compared by its data folder instead."""
    for key in RUN_KEYS:
        old, new = saved.get(key), state[key]
        if key == "data_fingerprint" and "data_fingerprint" not in saved:
            key, old, new = "data", saved.get("data"), state["data"]
            old = str(Path(old).resolve()) if old else None
        if old != new:
            if key == "data_fingerprint":
                return f"--data differs: {saved.get('data')} then, {state['data']} now (or its images changed)"
            return f"{key} differs: {str(old)[:80]} then, {str(new)[:80]} now"
    return None


def run_prune(model_path: str | Path, out: str | Path, request: PruneRequest, resume: bool = False,
              progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] | None = None) -> PruneResult:
    """Prune `model_path` per `request` into `out`; `progress(done, total)` after every finished step.

    Everything is validated before anything is cut or written; OUT.partial holds the last finished step
    of an unfinished run (and is removed once OUT is written).
    """
    req = request.validated()
    model_path, out = Path(model_path), Path(out)
    with OutputLock.for_file(out, "prune"):  # one prune per OUT; temp files of killed runs of OUT are removed
        clean_stale_temps(out.parent, [f".{out.name}.*.tmp"])
        return _run_prune(model_path, out, req, resume, progress, log or (lambda msg: None))


def _run_prune(model_path: Path, out: Path, req: PruneRequest, resume: bool,
               progress: Callable[[int, int], None] | None, log: Callable[[str], None]) -> PruneResult:
    """run_prune's work, with OUT locked."""
    net, ckpt = load_model(model_path)
    method = req.method
    check_compatible(method, ckpt.history, ckpt.arch, name=str(model_path))
    if req.source_teacher_file is not None:  # before any cut: a teacher of other identities fails only mid-finetuning
        student = {**config_identity(ckpt.config), **model_identity(net)}
        check_teacher(_checkpoint_identity(req.source_teacher_file), student, str(req.source_teacher_file))
    target = method.resolve_target(req.target, net) if req.target is not None else None
    spec = PruneSpec(method, req.steps, req.round_to, req.attn_unit, req.fraction)
    schedule = method.plan(net, target, spec, finetuned=req.finetune_epochs > 0)
    state = _run_state(model_path, req, target, schedule, int(method.counted_size(net)))
    source = net
    history, done, partial = list(ckpt.history), 0, partial_path(out)
    if resume and partial.is_file():
        pckpt = read_checkpoint(partial)
        saved = dict(pckpt.extra.get("prune_run") or {})
        differ = _differing_key(saved, state)
        if differ:
            raise GraftError(f"{partial} belongs to a different prune run ({differ}); delete it or drop --resume")
        net, history, done, state = model_from_checkpoint(pckpt, partial), list(pckpt.history), int(saved["done"]), saved
        log(f"resuming from {partial}: {done}/{len(schedule)} steps done")
    elif resume:
        log(f"no unfinished run at {partial}: starting from step 1")
    elif partial.is_file():
        log(f"note: {partial} is from an earlier run; starting over (pass --resume to continue it)")
    net.to(req.device)
    if req.source_teacher_file is not None:
        source = load_model(req.source_teacher_file)[0].to(req.device)
    teacher = Teacher(source, net, req.distill_config) if req.distilling else None
    cfg, prior = ckpt.config, list(history)
    new: list[dict[str, Any]] = []

    def on_step(m: nn.Module, entry: dict[str, Any]) -> None:
        if entry["step"] < entry["steps"]:  # the last step is written as OUT itself
            state["done"] = int(entry["step"])
            save_checkpoint(partial, m, cfg, arch=ckpt.arch if method.keeps_architecture else extract_arch(m),
                            history=prior + new + [entry], meta={"pruned_from": str(model_path)},
                            extra={"prune_run": dict(state)})
        new.append(entry)
        if teacher is not None and entry["step"] < entry["steps"]:
            teacher.step_done(m)
        if progress is not None:
            progress(int(entry["step"]), int(entry["steps"]))

    net, arch, history = prune_to_target(net, target, spec, _finetune_fn(cfg, req, done, teacher), on_step, history=prior,
                                         schedule=schedule, done=done)
    arch = arch if arch is not None else ckpt.arch
    net.cpu()
    save_checkpoint(out, net, cfg, arch=arch, history=history, meta={"pruned_from": str(model_path)})
    partial.unlink(missing_ok=True)
    return PruneResult(out=out, method=method, model=net, arch=arch, history=history,
                       new_steps=history[len(prior):], target=target, schedule=[int(t) for t in schedule],
                       start_size=int(state["start_size"]), resumed_steps=done)
