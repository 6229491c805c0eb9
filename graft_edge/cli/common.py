"""Shared CLI plumbing: GraftError -> one red line and exit 2, consoles, JSON output."""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from graft_edge.config import parse_modalities
from graft_edge.errors import GraftError, one_line
from graft_edge.evaluation import ALL_SUBSETS
from graft_edge.fileio import write_json
from graft_edge.formats import batch_dependence_note
from graft_edge.signals import Interrupted, exit_code, sigterm_as_interrupt

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USER_ERROR = 2
DTYPE_HELP = ("fp32; bf16 (torch.autocast: CPUs with AVX512-BF16/AMX, CUDA GPUs with bf16); or fp16 (torch.autocast, "
              "CUDA GPUs only)")


def console() -> Console:
    """Console for results (stdout)."""
    return Console(highlight=False)


def err_console() -> Console:
    """Console for errors and progress (stderr)."""
    return Console(stderr=True, highlight=False)


def guarded(func: F) -> F:
    """Turn GraftError (and stray exceptions) into one clear line and a non-zero exit, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return func(*args, **kwargs)
        except GraftError as exc:
            err_console().print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, markup=True, emoji=False)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt as exc:
            how = f" by {signal.Signals(exc.signum).name}" if isinstance(exc, Interrupted) else ""
            err_console().print(f"[bold red]interrupted{how}[/]")
            raise typer.Exit(exit_code(exc)) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except OSError as exc:  # a full disk, permissions, a vanished file: the OS's words and the path
            where = f": {exc.filename}" if exc.filename else ""
            err_console().print(f"[bold red]error:[/] {escape(str(exc.strerror or exc) + where)}", soft_wrap=True,
                                markup=True, emoji=False)
            raise typer.Exit(1) from None
        except Exception as exc:  # an unexpected failure: still one line unless debugging
            if os.environ.get("GRAFT_EDGE_DEBUG"):
                raise
            err_console().print(
                f"[bold red]internal error:[/] {escape(one_line(exc, 300))} (set GRAFT_EDGE_DEBUG=1 for the traceback)",
                soft_wrap=True, markup=True, emoji=False,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def warn_if_batch_dependent(path: Path, embedder: Any, consequence: str) -> None:
    """Warn (stderr) when the artefact's embeddings depend on their batch-mates (formats.batch_dependence_note)."""
    note = batch_dependence_note(path, embedder.info.format, embedder.info.extra.get("precision"))
    if note:
        err_console().print(f"[yellow]warning:[/] {escape(note)}; {consequence}", soft_wrap=True, emoji=False)


def check_output_file(path: Path | None, option: str) -> None:
    """Before any work: an output FILE option must not name a folder (or sit under a file)."""
    if path is None or str(path) == "-":
        return
    if path.is_dir():
        raise GraftError(f"{option} {path} is a folder: expected a file path")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise GraftError(f"{option} {path}: {parent} is a file, not a folder")


def check_output_folder(path: Path | None, option: str) -> None:
    """Before any work: an output FOLDER option must not name a file (or sit under one)."""
    if path is None:
        return
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise GraftError(f"{option} {path}: {blocker} is a file, not a folder")


def modalities_option(text: str | None, every_subset: bool = False) -> tuple[str, ...] | None:
    """--modalities as given (None: every modality of each model; ('all',) with every_subset: each non-empty subset);
    GraftError naming the option for an empty list, a repeated name or one outside rgb,nir,tir. Whether a model has
    them is checked against the model."""
    if text is None:
        return None
    if every_subset and text.strip().lower() == ALL_SUBSETS:
        return (ALL_SUBSETS,)
    try:
        return parse_modalities(text)
    except GraftError as exc:
        raise GraftError(f"--modalities {text!r}: {exc}") from None


def write_json_output(path: Path | None, data: Any) -> None:
    """Write JSON to a file atomically, or to stdout when path is '-'."""
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        write_json(path, data)
