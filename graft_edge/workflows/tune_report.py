"""What `tune` leaves in OUT: a results table (CSV + Markdown), Optuna's plots and the best trial's config."""
from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft_edge.config import GraftConfig, config_to_dict
from graft_edge.fileio import read_yaml, write_json, write_text, write_yaml
from graft_edge.workflows.tune_space import apply_params

PLOTS = {"optimization_history.png": "plot_optimization_history", "param_importances.png": "plot_param_importances"}


@dataclass
class TuneResult:
    """The study after this worker stopped."""

    best_number: int | None
    best_value: float | None  # validation mAP of the best trial (fraction)
    best_params: dict[str, float]
    best_config: Path | None  # OUT/best_config.yaml, ready for `graft-edge train --config`
    counts: dict[str, int]  # trials per state (COMPLETE, PRUNED, FAIL, RUNNING)
    files: list[Path]
    stopped: str | None = None  # why this worker stopped before the study had its trials (all its trials failed)


def states(study: Any) -> dict[str, int]:
    """Trial counts per state name."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def write_best_config(study: Any, cfg: GraftConfig, out: Path) -> Path | None:
    """OUT/best_config.yaml: the best trial's resolved config (from its run directory when present)."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    path = out / "best_config.yaml"
    run_cfg = Path(best.user_attrs.get("run_dir", "")) / "config.yaml"
    if run_cfg.is_file():
        write_yaml(path, read_yaml(run_cfg))
    else:
        write_yaml(path, config_to_dict(apply_params(cfg, best.params)))
    write_json(out / "best.json", {"number": best.number, "val_mAP": best.value, "params": best.params,
                                   "test_mAP": best.user_attrs.get("test_mAP"), "run_dir": best.user_attrs.get("run_dir"),
                                   "config": str(path)})
    return path


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else ""


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, val mAP, test mAP/R1 (reported only), evaluations, seconds, params, run dir."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name, "val_mAP": t.value,
                     "test_mAP": t.user_attrs.get("test_mAP"), "test_R1": t.user_attrs.get("test_R1"),
                     "evals": len(t.intermediate_values), "seconds": seconds, **t.params,
                     "run_dir": t.user_attrs.get("run_dir", ""), "error": t.user_attrs.get("error", "")})
    return rows


def _tables(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The same rows as CSV and as a Markdown table (percentages, best val first)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    params = [k for k in keys if k not in ("number", "state", "val_mAP", "test_mAP", "test_R1", "evals", "seconds",
                                           "run_dir", "error")]
    head = ["trial", "state", "val mAP", "test mAP", "test R1", "evals", "s", *params]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranked = sorted(rows, key=lambda r: -(r["val_mAP"] if r["val_mAP"] is not None else -1.0))
    for r in ranked:
        cells = [str(r["number"]), r["state"].lower(), _pct(r["val_mAP"]), _pct(r["test_mAP"]), _pct(r["test_R1"]),
                 str(r["evals"]), f"{r['seconds']:.0f}" if r["seconds"] is not None else "",
                 *(f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else "" for k in params)]
        lines.append("| " + " | ".join(cells) + " |")
    return buf.getvalue(), "\n".join(lines) + "\n"


def _plots(study: Any, out: Path, log: Callable[[str], None]) -> list[Path]:
    """Optuna's matplotlib plots; a plot that needs more finished trials is skipped with a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    files = []
    for name, func in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(vis, func)(study)
            ax.figure.savefig(out / name, dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
            files.append(out / name)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log(f"skipped {name}: {exc}")
    return files


def write_results(study: Any, cfg: GraftConfig, out: Path, log: Callable[[str], None]) -> TuneResult:
    """OUT/results.csv, results.md, the plots, best_config.yaml + best.json; returns the summary."""
    rows = trial_rows(study)
    csv_text, md = _tables(rows)
    files = [write_text(out / "results.csv", csv_text), write_text(out / "results.md", md)]
    files += _plots(study, out, log)
    best_cfg = write_best_config(study, cfg, out)
    best = study.best_trial if best_cfg is not None else None
    if best_cfg is not None:
        files += [best_cfg, out / "best.json"]
    return TuneResult(best.number if best else None, best.value if best else None, dict(best.params) if best else {},
                      best_cfg, states(study), files)
