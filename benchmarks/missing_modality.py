"""Missing-modality training on the capacity-bound synthetic set: for every non-empty subset of the sensors, the
plain model, the model trained with modality dropout (with and without the full-sensor teacher) and the specialist
trained on that subset only, over training seeds; mean test mAP with 95% t-intervals.

Conditions (each the `synthetic` preset, stage 1 of 32 epochs as in benchmarks/capacity_sweep.sh, one run per seed):
  plain        every sensor in every sample (the authors' recipe)
  dropout      train.modality_dropout=P (the `synthetic-robust` preset's P by default)
  dropout+kd   the same, distilled at every step from the plain model of the same seed seeing every sensor
               (train.teacher_file)
  specialist   model.modalities=SUBSET: built and trained on that subset only (one per strict subset; the
               specialist of the full set is the plain model)
Every model is evaluated once with `graft-edge eval --modalities all` (every subset, one pass per split).

    python benchmarks/missing_modality.py --out /tmp/mm --seeds 0,1,2 --jobs 2 --threads 1
    python benchmarks/missing_modality.py --out /tmp/mm --report-only      # the table from what has finished

Resumable: a finished run (result.json) is skipped, an interrupted one resumes (--resume), and a model's table
(robustness.json) is computed once. Writes OUT/missing_modality.json and OUT/missing_modality.md.
"""
from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from graft_edge.config import MODALITIES, ROBUST_DROPOUT

SUBSETS = [",".join(c) for k in range(1, len(MODALITIES) + 1) for c in itertools.combinations(MODALITIES, k)]
FULL = ",".join(MODALITIES)
BASE = ["--preset", "synthetic", "--set", "train.stage1.epochs=32"]


@dataclass
class Run:
    """One training run: its condition, seed, folder, extra `train` options and the runs it waits for."""

    condition: str
    seed: int
    out: Path
    extra: list[str]
    needs: list[Path] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (self.out / "result.json").is_file()

    @property
    def log(self) -> Path:
        """The run's console output, beside (not in) its run folder."""
        return self.out.parent / f"{self.out.name}.log"

    @property
    def ready(self) -> bool:
        return all((p / "result.json").is_file() for p in self.needs) and not self.busy

    @property
    def busy(self) -> bool:
        """Another process (an earlier call of this script, say) is training into the run's folder."""
        lock = self.out / ".graft-edge.lock"
        if not lock.is_file():
            return False
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False


def plan(out: Path, seeds: list[int], conditions: list[str], dropout: float) -> list[Run]:
    """Every run of the benchmark, plain runs first (they teach dropout+kd)."""
    runs = []
    for s in seeds:
        plain = out / "plain" / f"s{s}"
        if "plain" in conditions:
            runs.append(Run("plain", s, plain, []))
        if "dropout" in conditions:
            runs.append(Run("dropout", s, out / "dropout" / f"s{s}", ["--set", f"train.modality_dropout={dropout}"]))
        if "dropout+kd" in conditions:
            runs.append(Run("dropout+kd", s, out / "dropout-kd" / f"s{s}",
                            ["--set", f"train.modality_dropout={dropout}", "--set",
                             f"train.teacher_file={(plain / 'best.pt').resolve()}"], needs=[plain]))
        if "specialist" in conditions:
            runs += [Run(f"specialist:{sub}", s, out / f"spec-{sub.replace(',', '+')}" / f"s{s}",
                         ["--set", f"model.modalities={sub}"]) for sub in SUBSETS if sub != FULL]
    # plain and dropout of every seed first (the main comparison), then seed by seed the specialists and dropout+kd
    first = {"plain": 0, "dropout": 1}
    return sorted(runs, key=lambda r: (first.get(r.condition, 2), r.seed if r.condition in first else 0, r.seed,
                                       r.condition == "dropout+kd"))


def train_command(run: Run, data: Path, py: str) -> list[str]:
    """`graft-edge train` for the run (with --resume when an interrupted run left its state)."""
    resume = ["--resume"] if (run.out / "last.pt").is_file() else []
    return [py, "-m", "graft_edge", "train", *BASE, "--data", str(data), "--out", str(run.out),
            "--set", f"train.seed={run.seed}", *run.extra, *resume]


def run_jobs(runs: list[Run], data: Path, jobs: int, env: dict[str, str], py: str) -> None:
    """Train every unfinished run, `jobs` at a time (niced), each as soon as the runs it needs are done."""
    todo = [r for r in runs if not r.done]
    active: list[tuple[Run, subprocess.Popen, float]] = []
    while todo or active:
        for r, p, t0 in list(active):
            if p.poll() is not None:
                active.remove((r, p, t0))
                state = "done" if r.done else f"FAILED (exit {p.returncode}, see {r.log})"
                print(f"{r.condition} seed {r.seed}: {state} in {time.time() - t0:.0f} s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
                if not r.done:
                    raise SystemExit(f"error: {r.condition} seed {r.seed} failed")
        todo = [r for r in todo if not r.done]  # another call may have finished some
        while len(active) + sum(r.busy for r in todo) < jobs and any(r.ready for r in todo):
            r = next(r for r in todo if r.ready)
            todo.remove(r)
            r.log.parent.mkdir(parents=True, exist_ok=True)
            log = open(r.log, "a")
            cmd = ["nice", "-n", "10", *train_command(r, data, py)]
            print(f"{r.condition} seed {r.seed}: {' '.join(cmd[3:])}", flush=True)
            active.append((r, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
        waiting_on = [p for r in todo for p in r.needs if not (p / "result.json").is_file()]
        if todo and not active and not any(r.busy for r in todo) and not any(
                Run("", 0, p, []).busy for p in waiting_on):
            raise SystemExit("error: runs wait for runs that are not planned (dropout+kd needs plain)")
        time.sleep(5)


def robustness(run: Run, data: Path, env: dict[str, str], py: str) -> dict | None:
    """The run's every-subset table (graft-edge eval --modalities all), computed once."""
    path = run.out / "robustness.json"
    if not path.is_file() and run.done:
        subprocess.run(["nice", "-n", "10", py, "-m", "graft_edge", "eval", str(run.out / "best.pt"), "--data",
                        str(data), "--modalities", "all", "--json", str(path)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return json.loads(path.read_text()) if path.is_file() else None


def interval(values: list[float]) -> dict:
    """Mean, sample std and 95% t-interval half-width (None below two values)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {"mean": None, "std": None, "half": None, "n": 0}
    if len(x) < 2:
        return {"mean": float(x.mean()), "std": None, "half": None, "n": 1}
    std = float(x.std(ddof=1))
    return {"mean": float(x.mean()), "std": std, "n": len(x),
            "half": float(stats.t.ppf(0.975, len(x) - 1) * std / np.sqrt(len(x)))}


def collect(runs: list[Run], data: Path, env: dict[str, str], py: str) -> dict:
    """mAP (%) per condition, subset and seed; the specialists' own subset goes to the `specialist` column."""
    maps: dict[str, dict[str, dict[int, float]]] = {}
    for r in runs:
        table = robustness(r, data, env, py)
        if table is None:
            continue
        for row in table["subsets"]:
            sub = ",".join(row["modalities"])
            if r.condition.startswith("specialist:"):
                if sub != r.condition.split(":", 1)[1]:
                    continue
                cond = "specialist"
            else:
                cond = r.condition
            maps.setdefault(cond, {}).setdefault(sub, {})[r.seed] = 100 * row["mAP"]
    for sub, by_seed in maps.get("plain", {}).items():  # the full-set specialist is the plain model
        if sub == FULL:
            maps.setdefault("specialist", {})[FULL] = dict(by_seed)
    return maps


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a - b over the seeds both have, with its 95% t-interval."""
    seeds = sorted(set(a) & set(b))
    return interval([a[s] - b[s] for s in seeds])


def fmt(c: dict) -> str:
    if c["mean"] is None:
        return "-"
    return f"{c['mean']:.1f}" + (f" ± {c['half']:.1f}" if c["half"] is not None else "")


def report(maps: dict, out: Path, meta: dict) -> str:
    """The Markdown table (mean ± 95% half-width, n seeds) and missing_modality.json."""
    conds = ["plain", "dropout", "dropout+kd", "specialist"]
    cells = {c: {s: interval(list(maps.get(c, {}).get(s, {}).values())) for s in SUBSETS} for c in conds}
    diffs = {f"{c} - specialist": {s: paired(maps.get(c, {}).get(s, {}), maps.get("specialist", {}).get(s, {}))
                                   for s in SUBSETS} for c in ("dropout", "dropout+kd", "plain")}
    diffs["dropout+kd - dropout"] = {s: paired(maps.get("dropout+kd", {}).get(s, {}), maps.get("dropout", {}).get(s, {}))
                                     for s in SUBSETS}
    lines = ["| modalities | " + " | ".join(conds) + " | dropout − specialist | dropout+kd − specialist |"
             " dropout+kd − dropout |", "|---" * (len(conds) + 4) + "|"]
    for s in SUBSETS:
        lines.append(f"| {s.replace(',', '+')} | " + " | ".join(fmt(cells[c][s]) for c in conds) + " | "
                     + " | ".join(fmt(diffs[k][s]) for k in ("dropout - specialist", "dropout+kd - specialist",
                                                              "dropout+kd - dropout")) + " |")
    n = {c: max((cells[c][s]["n"] for s in SUBSETS), default=0) for c in conds}
    lines.append("")
    lines.append("Test mAP (%) on the query/gallery split: mean ± 95% t-interval half-width over training seeds "
                 f"({', '.join(f'{c}: {k}' for c, k in n.items())}); differences paired by seed. The specialist of "
                 "every sensor is the plain model.")
    md = "\n".join(lines) + "\n"
    (out / "missing_modality.md").write_text(md)
    (out / "missing_modality.json").write_text(json.dumps({**meta, "map": maps, "cells": cells, "differences": diffs},
                                                          indent=2, default=str))
    return md


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the data set, every run and the report.")
    ap.add_argument("--data", type=Path, default=None, help="Dataset root (default: OUT/data, written once: the "
                    "capacity-bound set, 80 ids x 16 cameras x 2 images, data seed 0).")
    ap.add_argument("--seeds", default="0,1,2", help="Training seeds (train.seed), comma-separated.")
    ap.add_argument("--conditions", default="plain,dropout,dropout+kd,specialist",
                    help="Comma-separated subset of plain, dropout, dropout+kd, specialist.")
    ap.add_argument("--dropout", type=float, default=ROBUST_DROPOUT, help="train.modality_dropout of the dropout "
                    "conditions (probability that a sample loses a random non-empty strict subset of its sensors).")
    ap.add_argument("--jobs", type=int, default=2, help="Trainings run at once (each niced, --threads each).")
    ap.add_argument("--threads", type=int, default=1, help="OMP/PyTorch threads per training.")
    ap.add_argument("--report-only", action="store_true", help="Train nothing: evaluate and tabulate what finished.")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    data = (args.data or out / "data").resolve()
    py = sys.executable
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    if not (data / "graft_dataset.json").is_file() and args.data is None:
        subprocess.run([py, "-m", "graft_edge", "synth", "--out", str(data), "--ids", "80", "--cameras", "16",
                        "--images-per-camera", "2", "--difficulty", "capacity", "--seed", "0"], env=env, check=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    runs = plan(out, seeds, conditions, args.dropout)
    started = time.time()
    if not args.report_only:
        run_jobs(runs, data, args.jobs, env, py)
    maps = collect(runs, data, env, py)
    meta = {"data": str(data), "seeds": seeds, "dropout": args.dropout, "base": BASE, "threads": args.threads,
            "seconds": time.time() - started}
    print(report(maps, out, meta))


if __name__ == "__main__":
    main(sys.argv[1:])
