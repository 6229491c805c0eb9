"""One resumable prune chain for the frontier and the size sweep.

A chain is a list of levels, each pruned (and finetuned) from the previous one by the resumable prune run
of `graft-edge prune`. Every finished level is a typed `Link`: its checkpoint recorded with its size and
SHA-256, reused on a rerun only while the file still matches (`Recorded.verify`); a changed or missing
checkpoint is made again, and an interrupted level resumes from its `.partial`. The frontier adds its
formats to each link; the sweep reads each link's last history entry as its row.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from graft_edge.checkpoint import load_model
from graft_edge.model import embedding_params
from graft_edge.workflows.prune import PruneRequest, run_prune
from graft_edge.workflows.records import Recorded, from_dict, resolve

Log = Callable[[str], None]


@dataclass
class Link(Recorded):
    """One level of a chain: its checkpoint (path, size, SHA-256), its target and what pruning added."""

    label: str = ""
    target: str | None = None  # as typed (80%, 60M); None for the chain's source
    target_params: int | None = None
    params: int | None = None
    params_nonzero: int | None = None
    seconds: float = 0.0
    steps: int = 0
    seed: int = 0  # finetuning seed offset; the source is seed 0 only
    history: list[dict[str, Any]] = field(default_factory=list)  # the pruning steps this level added

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Link:
        return from_dict(cls, data)


@dataclass(frozen=True)
class Level:
    """One level to make: where its record lives (`key`), what it is called, its target and its checkpoint."""

    key: str
    label: str
    dest: Path
    target: str | None = None
    target_params: int | None = None
    seed: int = 0


@dataclass
class Chain:
    """The links of one folder and how to keep them: `save()` after every finished level."""

    out: Path
    links: dict[str, Any]  # key -> Link (or a subclass: the frontier's VariantRecord)
    save: Callable[[], None]
    log: Log = lambda msg: None  # noqa: E731
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def ensure(self, level: Level, source: Path, request: PruneRequest | None, make: Callable[..., Link] = Link,
               progress: Callable[[int, int], None] | None = None) -> Link:
        """The level's link: reused when its recorded checkpoint is verified, else made from `source` (pruned with
        `request`, or copied when the request is None: the chain's own source) and recorded."""
        link = self.links.get(level.key)
        if link is not None and link.verify(self.out):
            self.skipped.append(f"{level.key}: pruned")
            return link
        if link is not None:
            self.log(f"{level.label}: {link.path or 'its checkpoint'} is missing or changed since it was made: "
                     "redoing it")
        started = time.perf_counter()
        level.dest.parent.mkdir(parents=True, exist_ok=True)
        if request is None:  # the source itself, copied for a self-contained folder
            shutil.copyfile(source, level.dest)
            model, history = load_model(level.dest)[0], []
        else:
            res = run_prune(source, level.dest, request, resume=True, progress=progress, log=self.log)
            model, history = res.model, res.new_steps
            self.done.append(f"{level.key}: pruned")
        link = make(label=level.label, target=level.target, target_params=level.target_params,
                    params=embedding_params(model), params_nonzero=embedding_params(model, nonzero=True),
                    seconds=time.perf_counter() - started, steps=len(history), seed=level.seed, history=history)
        link.record(self.out, level.dest)
        self.links[level.key] = link
        self.save()
        return link

    def path(self, key: str) -> Path:
        """The checkpoint of a finished link."""
        return resolve(self.out, self.links[key].path)
