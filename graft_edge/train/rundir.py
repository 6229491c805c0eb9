"""The run directory: its files, the new/resume/overwrite checks, and the rank-0 logger (console, JSONL, TensorBoard)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from graft_edge.errors import GraftError
from graft_edge.fileio import write_text
from graft_edge.outdir import clean_stale_temps, clear_owned, existing, is_empty

RUN_OWNS = ("config.yaml", "metrics.jsonl", "tb", "last.pt", "best.pt", "stage1_best.pt", "stage2_best.pt",
            "result.json")  # every entry a training run writes: what --overwrite may delete


@dataclass(frozen=True)
class RunPaths:
    """Every file a training run writes, under one folder."""

    root: Path

    @property
    def config(self) -> Path:
        """The resolved config (also what --resume compares against)."""
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        """One JSON line per epoch."""
        return self.root / "metrics.jsonl"

    @property
    def tb(self) -> Path:
        """TensorBoard event files."""
        return self.root / "tb"

    @property
    def last(self) -> Path:
        """Resume state: model, optimisers, sampler, RNG, position."""
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        """The delivered model (a plain checkpoint)."""
        return self.root / "best.pt"

    def stage_best(self, stage: int) -> Path:
        """RUN/stage{N}_best.pt: the best checkpoint of stage N by mAP."""
        return self.root / f"stage{stage}_best.pt"

    def owned(self) -> list[Path]:
        """What --overwrite removes: only entries this trainer writes (never anything else in the folder)."""
        return existing(self.root, RUN_OWNS)


def check_run_dir(paths: RunPaths, resume: bool, overwrite: bool) -> None:
    """Reject a non-empty folder without --resume/--overwrite, --resume without last.pt, and both flags."""
    root = paths.root
    if resume and overwrite:
        raise GraftError("--resume and --overwrite exclude each other: resume continues a run, overwrite restarts it")
    if root.exists() and not root.is_dir():
        raise GraftError(f"run directory {root} is a file, not a folder")
    if resume:
        if not paths.last.is_file() and not is_empty(root):
            raise GraftError(f"--resume: {paths.last} does not exist (the run in {root} stopped before its first "
                             "checkpoint: start it again with --overwrite)")
        if not paths.last.is_file():
            raise GraftError(f"--resume: {paths.last} does not exist (nothing to resume; start without --resume)")
        if not paths.config.is_file():
            raise GraftError(f"--resume: {paths.config} does not exist (is {root} a graft-edge run directory?)")
        return
    if not is_empty(root) and not overwrite:
        raise GraftError(f"run directory {root} is not empty: pass --resume to continue it or --overwrite to start over")


def clear_run_dir(paths: RunPaths) -> None:
    """--overwrite: delete the entries a previous run wrote (others are kept; a symlink is removed, not followed)."""
    clear_owned(paths.root, RUN_OWNS)


def clean_run_temps(paths: RunPaths) -> list[Path]:
    """Remove temp files a killed run left beside its own files (.last.pt.XXXX.tmp, ...); the lock must be held."""
    return clean_stale_temps(paths.root, [f".{name}.*.tmp" for name in RUN_OWNS])


def truncate_metrics(paths: RunPaths, keep_lines: int) -> None:
    """Resume: drop metrics.jsonl lines written after the checkpoint being resumed from."""
    if not paths.metrics.exists():
        return
    lines = paths.metrics.read_text().splitlines(keepends=True)[: max(0, keep_lines)]
    write_text(paths.metrics, "".join(lines))


class RunLogger:
    """Rank 0's output: summary lines, a per-epoch progress bar, metrics.jsonl and TensorBoard (no-op elsewhere)."""

    def __init__(self, paths: RunPaths | None, enabled: bool, progress: bool, purge_step: int | None = None) -> None:
        self.paths, self.enabled, self.show = paths, enabled, enabled and progress
        self.lines = 0
        self.writer = None
        self.bar: Any = None
        self.task: Any = None
        if self.show:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)
        if enabled and paths is not None:
            self.lines = len(paths.metrics.read_text().splitlines()) if paths.metrics.exists() else 0
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(paths.tb), purge_step=purge_step)

    def info(self, text: str) -> None:
        """One summary line to stderr."""
        if self.show:
            self.console.print(text, soft_wrap=True, markup=False)

    def start_epoch(self, title: str, total: int, done: int) -> None:
        """Open a transient progress bar for one epoch (only on a terminal)."""
        if not self.show or not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[sps]:.0f} samples/s"),
                            TimeRemainingColumn(), console=self.console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task(title, total=total, completed=done, loss=float("nan"), sps=0.0)

    def step(self, step: int, batch: int, loss: float, sps: float, lr: float) -> None:
        """Advance the bar; log loss and lr to TensorBoard every 10 steps."""
        if self.bar is not None:
            self.bar.update(self.task, completed=batch, loss=loss, sps=sps)
        if self.writer is not None and step % 10 == 0:
            self.writer.add_scalar("train/loss_step", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def end_epoch(self) -> None:
        """Close the progress bar."""
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.task = None, None

    def record(self, row: Mapping[str, Any]) -> None:
        """Append one metrics.jsonl line and its scalars to TensorBoard."""
        if not self.enabled or self.paths is None:
            return
        with open(self.paths.metrics, "a") as f:
            f.write(json.dumps(dict(row)) + "\n")
        self.lines += 1
        if self.writer is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("stage", "epoch", "step") and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"stage{row['stage']}/{key}", float(value), step)
            self.writer.flush()

    def close(self) -> None:
        """Flush and close TensorBoard."""
        self.end_epoch()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
