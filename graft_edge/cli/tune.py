"""`tune`: an Optuna hyperparameter search over training runs, objective = validation mAP."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer

from graft_edge.cli.common import console, err_console, guarded
from graft_edge.cli.train import resolve_config
from graft_edge.errors import GraftError
from graft_edge.fileio import read_yaml
from graft_edge.workflows.tune import TuneSettings, run_tune
from graft_edge.workflows.tune_space import TuneConfig, parse_param, space_from_mapping


def _space(params: list[str], space_file: Path | None) -> tuple:
    """--space FILE and --param NAME=LOW:HIGH[:log] (the latter win); None of both: the authors' ranges."""
    ranges: dict = {}
    if space_file is not None:
        data = read_yaml(space_file)
        data = data.get("hyperparams", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise GraftError(f"--space {space_file}: expected a mapping of NAME: {{low: .., high: .., log: ..}}")
        ranges.update({p.name: p for p in space_from_mapping(data, str(space_file))})
    for text in params:
        p = parse_param(text)
        ranges[p.name] = p
    return tuple(ranges.values()) if ranges else TuneConfig().space


@guarded
def tune_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset root; trials train on its train split less the held-out validation ids (data.val_fraction) and are scored on those."),
    out: Path = typer.Option(..., "--out", help="Study folder: trials/trial_NNNN run directories, study.db (default storage), results.csv/.md, plots, best_config.yaml."),
    trials: int = typer.Option(..., "--trials", help="Finished (complete or pruned) trials wanted in the study, counted over all workers sharing it."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Base config: rgbnt100, rgbn300 or synthetic."),
    config: Optional[Path] = typer.Option(None, "--config", help="Base config from a YAML file instead of --preset."),
    sets: list[str] = typer.Option([], "--set", help="Override a base config key, repeatable: --set train.stage1.epochs=5."),
    params: list[str] = typer.Option([], "--param", help="Search NAME in [LOW, HIGH], repeatable: --param train.stage1.lr=1e-5:1e-3:log (':int' for integers). Default: the authors' lr, weight decay and betas ranges for both stages."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search space YAML: NAME: {low: .., high: .., log: true} per line (the official hyperparams: {min, max, type} form also works)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna database URL shared by workers, e.g. postgresql://user@host/db (default: sqlite:///OUT/study.db)."),
    study: str = typer.Option("graft-edge", "--study", help="Study name in the storage; workers with the same --storage and --study share trials."),
    pruner: str = typer.Option("median", "--pruner", help="Early stopping of poor trials on their per-evaluation validation mAP: median, halving (successive halving) or none."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes per trial (> 1: each trial runs `graft-edge train --nproc N`, DDP)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cap each stage of each trial at N optimizer steps (quick searches)."),
    heartbeat: int = typer.Option(60, "--heartbeat", min=1, help="Seconds between trial heartbeats; a trial silent for twice this (its worker died) is marked failed."),
    seed: Optional[int] = typer.Option(None, "--seed", help="TPE sampler seed (default random; give each worker its own)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for in-process trials (default: PyTorch's)."),
) -> None:
    """Search training hyperparameters with Optuna; objective = validation mAP (never the test split).

    Run the same command on several machines with one --storage database URL to share the study.
    The best trial's resolved config is written to OUT/best_config.yaml for `graft-edge train --config`.
    """
    if trials < 1:
        raise GraftError(f"--trials {trials}: expected at least 1 trial")
    cfg = resolve_config(preset, config, sets, False, out)
    tune = TuneConfig(space=_space(params, space), pruner=pruner)
    if threads is not None:
        torch.set_num_threads(threads)
    settings = TuneSettings(out=out, trials=trials, storage=storage, study=study, nproc=nproc, max_steps=max_steps,
                            heartbeat_s=heartbeat, sampler_seed=seed)
    err = err_console()
    result = run_tune(cfg, tune, data, settings, log=lambda line: err.print(line, soft_wrap=True, markup=False))
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()))
    if result.stopped:
        raise GraftError(f"study {study}: {counts}; {result.stopped}: check the base config and the search space")
    if result.best_number is None:
        console().print(f"study {study}: {counts}; no trial completed", soft_wrap=True)
        return
    console().print(f"study {study}: {counts}; best trial {result.best_number}: val mAP {100 * result.best_value:.2f}"
                    f" -> {result.best_config}", soft_wrap=True)
