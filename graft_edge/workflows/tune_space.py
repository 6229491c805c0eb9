"""The hyperparameter search space of `graft-edge tune`: ranges over numeric config keys, and applying a draw.

Defaults are the authors' Optuna ranges (Nano1337/GraFT `cfgs/deit_hpo_rnt100.yaml`, `hyperparams:`):
lr log-uniform [1e-6, 1e-4], weight decay log-uniform [5e-4, 5e-3], beta1 [0.70, 0.95], beta2 [0.95, 0.99],
applied to both training stages. Any other numeric config key (warm-up steps, label smoothing, loss
weights, ...) can be searched by naming its dotted path; tuple entries by index (train.stage1.betas.0).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from graft_edge.config import GraftConfig, config_from_dict, config_to_dict
from graft_edge.errors import GraftError

PRUNERS = ("median", "halving", "none")


@dataclass(frozen=True)
class ParamRange:
    """One searched hyperparameter: a dotted config key and its [low, high] range."""

    name: str  # e.g. train.stage1.lr or train.stage2.betas.1
    low: float
    high: float
    log: bool = False  # sample log-uniformly (learning rates, weight decay)
    integer: bool = False  # an integer key (e.g. warmup_steps)


def _authors_space() -> tuple[ParamRange, ...]:
    """The official repo's ranges (deit_hpo_rnt100.yaml), for both stages."""
    out = []
    for stage in ("stage1", "stage2"):
        out += [ParamRange(f"train.{stage}.lr", 1e-6, 1e-4, log=True),
                ParamRange(f"train.{stage}.weight_decay", 5e-4, 5e-3, log=True),
                ParamRange(f"train.{stage}.betas.0", 0.70, 0.95),
                ParamRange(f"train.{stage}.betas.1", 0.95, 0.99)]
    return tuple(out)


@dataclass(frozen=True)
class TuneConfig:
    """What `tune` searches and how it stops bad trials early."""

    space: tuple[ParamRange, ...] = field(default_factory=_authors_space)
    pruner: str = "median"  # median | halving (successive halving) | none
    startup_trials: int = 2  # median pruner: trials that always run to the end first
    warmup_evals: int = 1  # median pruner: evaluations of a trial before it may be stopped


def lookup(data: Any, parts: list[str]) -> Any:
    """The value at a dotted path in a config dict (list entries by index), or KeyError."""
    node = data
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(part)
    return node


def check_space(cfg: GraftConfig, tune: TuneConfig) -> tuple[ParamRange, ...]:
    """The space checked against cfg (numeric keys, non-empty ranges, a known pruner); integer keys sample integers."""
    if tune.pruner not in PRUNERS:
        raise GraftError(f"pruner {tune.pruner!r}: expected one of {', '.join(PRUNERS)}")
    if not tune.space:
        raise GraftError("the search space is empty: give at least one --param NAME=LOW:HIGH")
    data = config_to_dict(cfg)
    seen = set()
    out = []
    for p in tune.space:
        try:
            value = lookup(data, p.name.split("."))
        except KeyError:
            raise GraftError(f"unknown hyperparameter {p.name!r}: expected a numeric config key such as "
                             "train.stage1.lr, train.stage2.weight_decay or train.stage1.betas.0") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GraftError(f"hyperparameter {p.name!r} is not numeric (its value is {value!r}); only numbers are searched")
        if p.name in seen:
            raise GraftError(f"hyperparameter {p.name!r} is listed twice in the search space")
        seen.add(p.name)
        out.append(_checked_range(cfg, replace(p, integer=p.integer or isinstance(value, int))))
    return tuple(out)


def _checked_range(cfg: GraftConfig, p: ParamRange) -> ParamRange:
    """One range: finite, non-empty, whole numbers for an integer key, LOW > 0 on a log scale, and both ends
    valid configs (a key's valid values form an interval, so a draw between them is valid unless it breaks a
    constraint across keys: such a trial fails and the study goes on)."""
    if not (math.isfinite(p.low) and math.isfinite(p.high)):
        raise GraftError(f"hyperparameter {p.name!r}: range [{p.low:g}, {p.high:g}] must be finite")
    if p.integer and not (float(p.low).is_integer() and float(p.high).is_integer()):
        raise GraftError(f"hyperparameter {p.name!r} takes integers: LOW and HIGH must be whole numbers, got "
                         f"{p.low:g}:{p.high:g}")
    if not p.low < p.high:
        raise GraftError(f"hyperparameter {p.name!r}: empty range [{p.low:g}, {p.high:g}]; expected LOW < HIGH")
    if p.log and p.low <= 0:
        raise GraftError(f"hyperparameter {p.name!r}: a log range needs LOW > 0, got {p.low:g}")
    for end, value in (("LOW", p.low), ("HIGH", p.high)):
        try:
            apply_params(cfg, {p.name: int(value) if p.integer else value})
        except GraftError as exc:
            raise GraftError(f"hyperparameter {p.name!r}: {end} {value:g} gives an invalid config ({exc})") from None
    return p


def parse_param(text: str) -> ParamRange:
    """'train.stage1.lr=1e-4:1e-2:log' -> ParamRange (suffix :log for log-uniform, :int for integers)."""
    name, sep, rest = text.partition("=")
    bits = rest.split(":")
    flags = {b.strip().lower() for b in bits[2:]}
    if not sep or len(bits) < 2 or not flags <= {"log", "int"}:
        raise GraftError(f"--param {text!r}: expected NAME=LOW:HIGH[:log][:int], e.g. train.stage1.lr=1e-5:1e-3:log")
    try:
        low, high = float(bits[0]), float(bits[1])
    except ValueError:
        raise GraftError(f"--param {text!r}: LOW and HIGH must be numbers") from None
    return ParamRange(name.strip(), low, high, log="log" in flags, integer="int" in flags)


def space_from_mapping(data: Mapping[str, Any], where: str) -> tuple[ParamRange, ...]:
    """A YAML search space {name: {low, high, log?, int?}} (also the official {min, max, type}) -> ranges."""
    out = []
    for name, spec in data.items():
        if not isinstance(spec, Mapping):
            raise GraftError(f"{where}: {name!r} must map to {{low: .., high: ..}}, got {spec!r}")
        try:
            low = float(spec.get("low", spec.get("min")))
            high = float(spec.get("high", spec.get("max")))
        except (TypeError, ValueError):
            raise GraftError(f"{where}: {name!r} needs numeric low and high (or min and max)") from None
        kind = str(spec.get("type", ""))
        out.append(ParamRange(str(name), low, high, log=bool(spec.get("log", kind == "loguniform")),
                              integer=bool(spec.get("int", kind == "int"))))
    return tuple(out)


def suggest(trial: Any, space: Iterable[ParamRange]) -> dict[str, float]:
    """Draw one value per range from an Optuna trial."""
    values: dict[str, float] = {}
    for p in space:
        if p.integer:
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


def apply_params(cfg: GraftConfig, values: Mapping[str, float]) -> GraftConfig:
    """cfg with each dotted key set to its drawn value (validated like a config file)."""
    data = config_to_dict(cfg)
    for name, value in values.items():
        parts = name.split(".")
        try:
            parent = lookup(data, parts[:-1])
        except KeyError:
            raise GraftError(f"unknown hyperparameter {name!r}") from None
        key: Any = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        parent[key] = value
    return config_from_dict(data)
