"""A size sweep in the manner of the paper's Tables 3-4, repeated over finetuning seeds and conditions.

Every (condition, seed) is its own chain from the dense model: dense -> 80% -> 60% -> 45% -> 35% (fractions of
the dense size), each level pruned from the previous one in one cut by the resumable prune run of `graft-edge
prune` (workflows.prune) and, in the finetuned conditions, finetuned for the same number of epochs (the best
epoch on the validation split is kept; the test split is only reported). Conditions:

    structured          structured pruning, no finetuning (one chain: without training the seeds do not matter)
    structured+ft       structured pruning + finetuning
    structured+ft+kd    structured pruning + finetuning with distillation from the dense model at every level (or,
                        with teacher "previous", from the model before each cut)
    unstructured        unstructured (global L1) pruning at the same budgets, no finetuning
    unstructured+ft     unstructured pruning + finetuning
    control             the dense model finetuned for as many epochs as a whole chain gets (no pruning)

Rows give val and test mAP/R1/R5/R10 as mean ± sample std over the seeds (frontier_seeds.aggregate_rows) and
the test mAP judged against dense by graft_edge.verdicts (per-seed differences, 95% intervals). OUT holds every chain's checkpoints and `sweep_state.json`
(the finished seed rows): a rerun skips what is done.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from graft_edge.checkpoint import load_model
from graft_edge.compress import get_method, parse_targets
from graft_edge.errors import GraftError, one_line
from graft_edge.evaluation import evaluate_test_and_val
from graft_edge.fileio import sha256_file, write_json
from graft_edge.model import embedding_params
from graft_edge.model.embedder import ModelEmbedder
from graft_edge.outdir import OutputLock
from graft_edge.train import finetune
from graft_edge.train.distill import DistillConfig
from graft_edge.verdicts import DEFAULT_MARGIN
from graft_edge.workflows.chain import Chain, Level, Link
from graft_edge.workflows.prune import PruneRequest
from graft_edge.workflows.sweep_report import METRICS, sweep_rows, write_sweep_reports

Log = Callable[[str], None]
STATE_FILE = "sweep_state.json"
STATE_SCHEMA = "graft-edge/sweep-state"
STATE_VERSION = 2  # version 2: the chains' checkpoints are typed links with their hashes


@dataclass(frozen=True)
class Condition:
    """One way to reach the budgets: pruning method, finetuning, distillation (control: finetune dense only)."""

    name: str
    method: str
    finetune: bool
    distill: bool = False
    control: bool = False


CONDITIONS = {c.name: c for c in (
    Condition("structured", "structured", False), Condition("structured+ft", "structured", True),
    Condition("structured+ft+kd", "structured", True, True), Condition("unstructured", "unstructured", False),
    Condition("unstructured+ft", "unstructured", True), Condition("control", "structured", True, control=True),
)}
DEFAULT_CONDITIONS = ("structured", "structured+ft", "structured+ft+kd", "unstructured", "unstructured+ft")
DEFAULT_LEVELS = ("80%", "60%", "45%", "35%")  # the paper's Table 3 is 75/70/60/45% of 101M


@dataclass(frozen=True)
class SweepSettings:
    """What the sweep runs (the script's options, as data)."""

    levels: tuple[str, ...] = DEFAULT_LEVELS
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    seeds: int = 3  # finetuning seeds; each seed is its own chain
    finetune_epochs: int = 2  # per level, in every finetuned condition (equal epochs)
    device: str = "cpu"
    distill: DistillConfig = DistillConfig()  # the +kd condition's teacher, weights and temperature
    margin: float = DEFAULT_MARGIN  # mAP fraction within which a difference is "equivalent" (the report only)

    def validated(self) -> SweepSettings:
        """A checked copy (GraftError naming the first bad option)."""
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise GraftError(f"--conditions {bad[0] if bad else ''!r}: expected a comma-separated subset of "
                             f"{', '.join(CONDITIONS)}")
        if self.seeds < 1:
            raise GraftError(f"--seeds {self.seeds}: expected a positive integer")
        if self.finetune_epochs < 1 and any(CONDITIONS[c].finetune for c in self.conditions):
            raise GraftError(f"--finetune-epochs {self.finetune_epochs}: the finetuned conditions need 1 or more")
        self.distill.validated()
        if not 0 <= self.margin < 1:
            raise GraftError(f"--margin {100 * self.margin:g}: expected mAP points in [0, 100)")
        return replace(self, levels=tuple(map(str, parse_targets(self.levels))), conditions=tuple(dict.fromkeys(self.conditions)))

    def identity(self) -> dict[str, Any]:
        """What finished rows depend on (a rerun into the same OUT must match)."""
        return {"levels": list(self.levels), "finetune_epochs": self.finetune_epochs,
                **({"distill": self.distill.as_record()} if self.distill != DistillConfig() else {})}


@dataclass
class SweepResult:
    """The aggregated rows (mean ± std), every seed's row, and the report files."""

    rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]]
    files: dict[str, Path]
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class SweepState:
    """A sweep folder's finished work, typed: the chains' links (checkpoints with their hashes, verified before reuse)
    and the rows that are no chain link (dense, the finetuning control)."""

    source: str
    source_sha256: str
    identity: dict[str, Any]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # dense, control/s<k>/100%
    links: dict[str, Link] = field(default_factory=dict)  # condition/s<k>/<level> -> its pruned checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {"schema": STATE_SCHEMA, "version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepState:
        state = cls(data["source"], data["source_sha256"], data["identity"], dict(data.get("rows") or {}))
        state.links = {k: Link.from_dict(v) for k, v in (data.get("links") or {}).items()}
        return state

    def chain_row(self, key: str) -> dict[str, Any]:
        """The row of a chain level: its sizes and the metrics of its last pruning step."""
        condition, seed, level = key.split("/", 2)
        link = self.links[key]
        return {"condition": condition, "level": level, "seed": int(seed[1:]), "params_embedding": link.params,
                "params_nonzero": link.params_nonzero, **_scores(link.history[-1] if link.history else {}),
                "seconds": link.seconds}


@dataclass(frozen=True)
class _Job:
    model_path: Path
    data: Path
    out: Path
    settings: SweepSettings
    log: Log
    state: SweepState
    result: SweepResult

    def save(self) -> None:
        write_json(self.out / STATE_FILE, self.state.to_dict())

    def row(self, key: str) -> dict[str, Any] | None:
        """A finished row (a verified chain link, or a dense/control row)."""
        if key in self.state.links:
            return self.state.chain_row(key) if self.state.links[key].verify(self.out) else None
        return self.state.rows.get(key)


def _key(condition: str, seed: int, level: str) -> str:
    return f"{condition}/s{seed}/{level}"


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: float(metrics[k]) for k in METRICS if metrics.get(k) is not None}


def _evaluate(model: Any, data: Path, cfg: Any) -> dict[str, Any]:
    """Test and validation metrics of a live model."""
    model.eval()
    return evaluate_test_and_val(ModelEmbedder(model), data, cfg)


def _dense_row(job: _Job) -> None:
    """dense, evaluated once (it is one model: no seeds)."""
    if "dense" in job.state.rows:
        job.result.skipped.append("dense")
        return
    model, ckpt = load_model(job.model_path)
    row = {"condition": "dense", "level": "100%", "seed": 0, "params_embedding": embedding_params(model),
           "params_nonzero": embedding_params(model, nonzero=True), **_scores(_evaluate(model, job.data, ckpt.config)),
           "seconds": 0.0}
    job.state.rows["dense"] = row
    job.save()
    job.log(f"dense: {row['params_embedding']:,} params, val mAP {100 * row.get('val_mAP', float('nan')):.2f}, "
            f"test mAP {100 * row['mAP']:.2f}")


def _chain(job: _Job, cond: Condition, seed: int, dense: Any) -> None:
    """One (condition, seed) chain: every level pruned (and finetuned) from the previous one (workflows.chain)."""
    s, prev = job.settings, job.model_path
    cdir = job.out / "chains" / cond.name / f"s{seed}"
    chain = Chain(job.out, job.state.links, job.save, job.log)
    method = get_method(cond.method)
    for level in s.levels:
        key = _key(cond.name, seed, level)
        target = method.resolve_target(level, dense)  # a fraction of the DENSE size, not of the previous level's
        req = PruneRequest(target=target, method=method, steps=1, data=job.data,
                           finetune_epochs=s.finetune_epochs if cond.finetune else 0, device=s.device,
                           evaluate=True, distill=cond.distill if cond.finetune else None, seed_offset=seed,
                           distill_config=s.distill,
                           teacher_file=job.model_path if s.distill.teacher == "source" else None)
        try:
            chain.ensure(Level(key, key, cdir / f"{level.replace('%', 'pct')}.pt", level, target, seed), prev, req)
        except GraftError as exc:  # below what the method can reach on this model: the chain ends here
            job.log(f"{key}: skipped ({one_line(exc)})")
            return
        prev = chain.path(key)
        if chain.skipped and chain.skipped[-1].startswith(key):
            job.result.skipped.append(key)
            continue
        job.result.done.append(key)
        row = job.state.chain_row(key)
        job.log(f"{key}: {row['params_embedding']:,} params, {row['params_nonzero']:,} nonzero, "
                f"val mAP {100 * row.get('val_mAP', float('nan')):.2f}, test mAP {100 * row['mAP']:.2f} "
                f"({row['seconds']:.0f} s)")


def _control(job: _Job, seed: int, dense: Any, cfg: Any) -> None:
    """The dense model finetuned for a whole chain's epochs: how much of a level's mAP is extra training alone."""
    key = _key("control", seed, "100%")
    if key in job.state.rows:
        job.result.skipped.append(key)
        return
    epochs = job.settings.finetune_epochs * len(job.settings.levels)
    started = time.perf_counter()
    model, metrics = finetune(copy.deepcopy(dense), cfg, job.data, epochs, seed=(int(cfg.train.seed) + seed) * 10_007)
    row = {"condition": "control", "level": "100%", "seed": seed, "params_embedding": embedding_params(model),
           "params_nonzero": embedding_params(model, nonzero=True), **_scores(metrics),
           "seconds": time.perf_counter() - started}
    job.state.rows[key] = row
    job.save()
    job.result.done.append(key)
    job.log(f"{key}: dense finetuned {epochs} epochs: test mAP {100 * row['mAP']:.2f}")


def _open_state(out: Path, model_path: Path, settings: SweepSettings) -> SweepState:
    """OUT's finished work for this model and settings (a fresh state for a new OUT)."""
    sha = sha256_file(model_path)
    path = out / STATE_FILE
    if not path.is_file():
        return SweepState(str(model_path), sha, settings.identity())
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraftError(f"{path} is unreadable ({exc}); use a new --out") from None
    if data.get("schema") != STATE_SCHEMA or data.get("version") != STATE_VERSION:
        raise GraftError(f"{path} is a sweep state of an older graft-edge (no checkpoint hashes); use a new --out")
    state = SweepState.from_dict(data)
    if state.source_sha256 != sha or state.identity != settings.identity():
        raise GraftError(f"{out} holds a sweep of another model or other --levels/--finetune-epochs; use a new --out")
    return state


def run_sweep(model_path: str | Path, data: str | Path, out: str | Path, settings: SweepSettings = SweepSettings(),
              log: Log | None = None) -> SweepResult:
    """Run (or resume) every (condition, seed) chain of `settings` into OUT; write sweep.json and sweep.md there."""
    settings = settings.validated()
    model_path, data, out = Path(model_path), Path(data), Path(out)
    if not model_path.is_file():
        raise GraftError(f"--model {model_path} does not exist")
    if not data.is_dir():
        raise GraftError(f"--data {data} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out, "sweep"):
        job = _Job(model_path, data, out, settings, log or (lambda msg: None),
                   _open_state(out, model_path, settings), SweepResult([], [], {}))
        dense, ckpt = load_model(model_path)
        _dense_row(job)
        for name in settings.conditions:
            cond = CONDITIONS[name]
            for seed in range(settings.seeds if cond.finetune else 1):  # without training every seed is the same
                if cond.control:
                    _control(job, seed, dense, ckpt.config)
                else:
                    _chain(job, cond, seed, dense)
        wanted = _wanted(settings)
        job.result.seed_rows = [r for k in wanted if (r := job.row(k)) is not None]
        job.result.rows = sweep_rows(job.result.seed_rows, settings.levels, settings.margin)
        job.result.files = write_sweep_reports(out, job.result.rows, job.result.seed_rows,
                                               {"model": str(model_path), "data": str(data),
                                                "settings": asdict(settings)}, settings.margin)
        return job.result


def run_sweeps(models: Sequence[str | Path], data: str | Path, out: str | Path,
               settings: SweepSettings = SweepSettings(), log: Log | None = None) -> SweepResult:
    """One sweep per dense model (e.g. the same recipe trained with different seeds) into OUT/m<i>, then one report
    over all of them in OUT: model i's finetuning seed s counts as seed i * settings.seeds + s, so the mean ± std
    covers training and finetuning noise, dense included (its std is then the training seed std)."""
    if not models:
        raise GraftError("--model: give at least one dense checkpoint")
    missing = next((m for m in models if not Path(m).is_file()), None)
    if missing is not None:  # before any sweep starts, not after the first ones ran
        raise GraftError(f"--model {missing} does not exist")
    out = Path(out)
    log = log or (lambda msg: None)
    if len(models) == 1:
        return run_sweep(models[0], data, out, settings, log)
    parts = []
    for i, model in enumerate(models):
        log(f"model {i + 1}/{len(models)}: {model}")
        parts.append(run_sweep(model, data, out / f"m{i}", settings, log))
    seed_rows = [{**r, "seed": i * settings.seeds + int(r.get("seed") or 0), "model": str(models[i])}
                 for i, part in enumerate(parts) for r in part.seed_rows]
    levels = tuple(map(str, parse_targets(settings.levels)))
    result = SweepResult(rows=sweep_rows(seed_rows, levels, settings.margin), seed_rows=seed_rows, files={},
                         done=[k for p in parts for k in p.done], skipped=[k for p in parts for k in p.skipped])
    result.files = write_sweep_reports(out, result.rows, seed_rows, {
        "models": [str(m) for m in models], "data": str(data), "settings": asdict(settings.validated())},
        settings.margin)
    return result


def _wanted(settings: SweepSettings) -> list[str]:
    """The state keys this call's settings report, in run order (a state may hold more seeds or conditions from
    other calls)."""
    keys = ["dense"]
    for name in settings.conditions:
        cond = CONDITIONS[name]
        for seed in range(settings.seeds if cond.finetune else 1):
            levels = ("100%",) if cond.control else settings.levels
            keys += [_key(name, seed, level) for level in levels]
    return keys
