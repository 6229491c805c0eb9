"""`graft-edge tune`: an Optuna study over training hyperparameters, objective = validation mAP.

Every trial is a normal training run directory under OUT/trials/ (config.yaml, metrics.jsonl, best.pt);
the validation mAP of each evaluation is reported to the pruner, which stops poor trials early. The
study lives in an Optuna RDB storage (a SQLite file in OUT by default, or any database URL Optuna
supports, so that workers on several machines share one study). Trials send a heartbeat; a trial whose
process died (SIGKILL, power loss) is marked FAIL once its heartbeat is older than the grace period,
and the study goes on. `trials` counts finished (complete or pruned) trials over all workers.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft_edge.config import GraftConfig, config_to_dict
from graft_edge.data.layouts import dataset_fingerprint
from graft_edge.errors import GraftError, one_line
from graft_edge.fileio import write_yaml
from graft_edge.train.rundir import RunPaths
from graft_edge.train.runner import preflight, run_training
from graft_edge.workflows.tune_report import TuneResult, states, write_results
from graft_edge.workflows.tune_space import TuneConfig, apply_params, check_space, lookup, suggest

STUDY_FILE = "study.db"
LOCK_FILE = ".tune.lock"
Log = Callable[[str], None]


@dataclass(frozen=True)
class TuneSettings:
    """How one `tune` worker runs: the study, its budget and each trial's launch."""

    out: Path  # OUT: trials/, study.db (default storage), results and plots
    trials: int  # finished trials wanted in the study, over all workers
    storage: str | None = None  # Optuna database URL; None: sqlite:///OUT/study.db
    study: str = "graft-edge"
    nproc: int = 1  # processes per trial (> 1: each trial runs `graft-edge train --nproc N`)
    max_steps: int | None = None  # cap each stage of each trial at N optimizer steps
    heartbeat_s: int = 60  # trial heartbeat; a trial silent for 2x this is marked failed
    sampler_seed: int | None = None  # TPE seed (None: random; workers must not share one)

    def storage_url(self) -> str:
        """The database URL this worker opens."""
        return self.storage or f"sqlite:///{(self.out / STUDY_FILE).resolve()}"


def _optuna() -> Any:
    """Optuna, imported on use (an optional heavy dependency)."""
    try:
        import optuna
    except ImportError:
        raise GraftError("tune needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is reported by run_tune in one line
    return optuna


def open_storage(settings: TuneSettings, attempts: int = 5) -> Any:
    """An RDBStorage with heartbeats; one clear line when the database cannot be reached.

    Workers starting together may race to create the tables; the loser retries (the tables exist then).
    """
    optuna = _optuna()
    from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

    url = settings.storage_url()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=settings.heartbeat_s,
                                                  grace_period=2 * settings.heartbeat_s)
        except (OperationalError, IntegrityError) as exc:  # another worker creating the same tables right now
            racing = any(k in str(exc) for k in ("already exists", "locked", "UNIQUE constraint", "duplicate key"))
            if not racing or attempt == attempts - 1:
                raise GraftError(_storage_error(url, exc)) from None
            time.sleep(0.5 * (attempt + 1))
        except (SQLAlchemyError, ImportError, ValueError) as exc:  # bad URL, missing driver, unreachable server
            raise GraftError(_storage_error(url, exc)) from None
    raise AssertionError("unreachable")


def _storage_error(url: str, exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"--storage {url!r}: cannot open the study database ({type(exc).__name__}: {first})"


def _pruner(optuna: Any, tune: TuneConfig) -> Any:
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_evals)
    if tune.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def study_base(cfg: GraftConfig, tune: TuneConfig, data_root: str | Path, settings: TuneSettings) -> dict[str, Any]:
    """What every trial of a study shares besides its draw: the base config (searched keys left out), the data (a
    fingerprint of its files, so machines may mount it at other paths), the step cap and the processes per trial."""
    config = config_to_dict(cfg)
    for p in tune.space:
        parts = p.name.split(".")
        parent = lookup(config, parts[:-1])
        parent[int(parts[-1]) if isinstance(parent, list) else parts[-1]] = "searched"
    return {"config": config, "data": dataset_fingerprint(data_root), "max_steps": settings.max_steps,
            "nproc": settings.nproc}


def _first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """'key: old then, new now' for the first dotted key where two nested records differ; None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(dict.fromkeys([*old, *new])):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    return None if old == new else f"{path}: {str(old)[:60]} then, {str(new)[:60]} now"


def open_study(settings: TuneSettings, tune: TuneConfig, base: dict[str, Any] | None = None) -> Any:
    """Create or join the named study (maximise validation mAP); the search space and the base (`study_base`) must
    match the ones it was made with, so no trial is judged against trials of another setup."""
    optuna = _optuna()
    storage = open_storage(settings)
    study = optuna.create_study(storage=storage, study_name=settings.study, direction="maximize",
                                load_if_exists=True, pruner=_pruner(optuna, tune),
                                sampler=optuna.samplers.TPESampler(seed=settings.sampler_seed))
    where = f"study {settings.study!r} in {settings.storage_url()}"
    space = [config_to_dict(p) for p in tune.space]
    known = study.user_attrs.get("space")
    if known is None:
        study.set_user_attr("space", space)
    elif known != space:
        raise GraftError(f"{where} was created with another search space; use the same --param/--space or a new "
                         "--study NAME")
    known = study.user_attrs.get("base")
    if known is None and base is not None:
        study.set_user_attr("base", base)
    elif base is not None and known != base:
        diff = _first_difference(known, base) or "base"
        diff = "--data holds other image files" if diff.startswith("data:") else diff
        raise GraftError(f"{where} was started with another setup ({diff}); use the same --config/--set/--data/"
                         "--max-steps/--nproc, or a new --study NAME or --out")
    return study


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[Any]:
    """An exclusive lock on a file (workers on this machine take turns to start trials)."""
    from filelock import FileLock

    lock = FileLock(str(path))
    lock.acquire()
    try:
        yield lock
    finally:
        if lock.is_locked:
            lock.release()


def _fail_stale(study: Any) -> None:
    """Mark trials whose heartbeat stopped (killed workers) as FAIL."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def _objective(cfg: GraftConfig, tune: TuneConfig, data_root: Path, settings: TuneSettings,
               log: Log, release: Callable[[], None]) -> Callable[[Any], float]:
    """The trial function: draw, train into OUT/trials/trial_NNNN, report val mAP per evaluation."""
    optuna = _optuna()

    def objective(trial: Any) -> float:
        release()  # this worker's trial exists now: others may start theirs
        try:
            return run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # a failed trial (diverged, an invalid draw, ...): recorded, the study goes on
            trial.set_user_attr("error", one_line(exc, 300))
            raise

    def run(trial: Any) -> float:
        values = suggest(trial, tune.space)
        log(f"trial {trial.number}: " + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))
        trial_cfg = apply_params(cfg, values)
        run_dir = settings.out / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        evals = iter(range(1, 1_000_000))

        def on_eval(row: Mapping[str, Any]) -> None:
            value = row.get("val_mAP")
            if value is None:
                return
            trial.report(float(value), next(evals))
            if trial.should_prune():
                raise optuna.TrialPruned(f"val mAP {100 * value:.2f} at stage {row['stage']} epoch {row['epoch']}")

        summary = _run_trial(trial_cfg, data_root, run_dir, settings, on_eval)
        metrics = summary.get("metrics", {})
        if metrics.get("val_mAP") is None:
            raise GraftError(f"trial {trial.number} ran no validation (see {run_dir}/metrics.jsonl)")
        trial.set_user_attr("test_mAP", metrics.get("mAP"))
        trial.set_user_attr("test_R1", metrics.get("R1"))
        return float(metrics["val_mAP"])

    return objective


def _run_trial(cfg: GraftConfig, data_root: Path, run_dir: Path, settings: TuneSettings,
               on_eval: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
    """One training run: in this process, or through `graft-edge train --nproc N` while following metrics.jsonl."""
    if settings.nproc <= 1:
        run_training(cfg, data_root, run_dir, overwrite=run_dir.exists(), max_steps=settings.max_steps,
                     progress=False, on_eval=on_eval)
    else:
        _run_trial_subprocess(cfg, data_root, run_dir, settings, on_eval)
    return json.loads((run_dir / "result.json").read_text())


def train_argv(cfg_file: Path, data_root: Path, run_dir: Path, settings: TuneSettings) -> list[str]:
    """The `graft-edge train` command line of a multi-process trial."""
    argv = [sys.executable, "-m", "graft_edge", "train", "--config", str(cfg_file), "--data", str(data_root),
            "--out", str(run_dir), "--nproc", str(settings.nproc), "--overwrite"]
    return argv + (["--max-steps", str(settings.max_steps)] if settings.max_steps else [])


def _run_trial_subprocess(cfg: GraftConfig, data_root: Path, run_dir: Path, settings: TuneSettings,
                          on_eval: Callable[[Mapping[str, Any]], None]) -> None:
    """Launch the trial under torchrun and feed each new metrics.jsonl evaluation to on_eval (which may stop it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = settings.out / "trials" / f"{run_dir.name}.yaml"
    write_yaml(cfg_file, config_to_dict(cfg))
    proc = subprocess.Popen(train_argv(cfg_file, data_root, run_dir, settings))
    seen = 0
    try:
        while True:
            done = proc.poll() is not None
            text = RunPaths(run_dir).metrics.read_text() if RunPaths(run_dir).metrics.exists() else ""
            lines = text[: text.rfind("\n") + 1].splitlines()  # complete lines only (a write may be under way)
            for line in lines[seen:]:
                on_eval(json.loads(line))
            seen = len(lines)
            if done:
                break
            time.sleep(1.0)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    if proc.returncode != 0:
        raise GraftError(f"trial run {run_dir} failed (graft-edge train exited with {proc.returncode})")


def _wait_or_start(study: Any, settings: TuneSettings) -> bool:
    """True when this worker should start a trial; waits while other workers' running trials may still finish."""
    while True:
        _fail_stale(study)
        counts = states(study)
        finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        if finished >= settings.trials:
            return False
        if finished + counts.get("RUNNING", 0) < settings.trials:
            return True
        time.sleep(min(5.0, float(settings.heartbeat_s)))  # a running trial may yet fail: then we run one more


def _check_inputs(cfg: GraftConfig, tune: TuneConfig, data_root: str | Path, settings: TuneSettings) -> TuneConfig:
    """Everything checked before the study is opened: budget, validation split, search space, data."""
    if settings.trials < 1:
        raise GraftError(f"--trials {settings.trials}: expected at least 1 trial")
    if settings.max_steps is not None and settings.max_steps < 1:
        raise GraftError(f"--max-steps {settings.max_steps}: expected a positive integer")
    if cfg.data.val_fraction <= 0:
        raise GraftError("tune needs a validation split (its objective is validation mAP, never the test split): "
                         "data.val_fraction is 0; set it to e.g. 0.2")
    tune = TuneConfig(check_space(cfg, tune), tune.pruner, tune.startup_trials, tune.warmup_evals)
    preflight(cfg, data_root, settings.nproc)  # the data suits the base config (ids, validation split, query)
    return tune


def run_tune(cfg: GraftConfig, tune: TuneConfig, data_root: str | Path, settings: TuneSettings,
             log: Log = lambda _: None) -> TuneResult:
    """Run trials in this worker until the study holds `settings.trials` finished trials; write the results.

    A trial that fails is recorded as failed with its reason and the study goes on; a worker whose last
    max(--trials, 3) trials all failed stops (result.stopped says why): its draws cannot succeed.
    """
    tune = _check_inputs(cfg, tune, data_root, settings)
    base = study_base(cfg, tune, data_root, settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    lock_path = out / LOCK_FILE
    with _file_lock(lock_path):  # workers on this machine create the database one at a time
        study = open_study(settings, tune, base)
    failed_in_a_row, stopped = 0, None
    while stopped is None:
        with _file_lock(lock_path) as lock:
            if not _wait_or_start(study, settings):
                break
            objective = _objective(cfg, tune, Path(data_root), settings, log, lock.release)
            mine: list[Any] = []
            study.optimize(objective, n_trials=1, catch=(Exception,),
                           callbacks=[lambda _, trial, mine=mine: mine.append(trial)])
        for t in mine:  # this worker's trial (others may have finished theirs meanwhile)
            failed_in_a_row = failed_in_a_row + 1 if t.state.name == "FAIL" else 0
            why = f": {t.user_attrs['error']}" if t.state.name == "FAIL" and t.user_attrs.get("error") else ""
            state = "failed" if t.state.name == "FAIL" else t.state.name.lower()
            log(f"study {settings.study}: trial {t.number} {state}{why}"
                + (f", val mAP {100 * t.value:.2f}" if t.value is not None else ""))
            if failed_in_a_row >= max(settings.trials, 3):
                stopped = f"{failed_in_a_row} trials in a row failed (the last{why or ' without a reason'}); stopping"
    result = write_results(study, cfg, out, log)
    result.stopped = stopped
    return result
