"""The frontier's resumable state, typed: what was pruned, exported, evaluated and timed, with file hashes.

Saved as `frontier_state.json` (schema graft-edge/frontier-state, version 3) after every finished
piece. Version 3 adds the finetuning seed of every variant (`--seeds`: `t<params>-s<k>` variants for
seeds k > 0); version-2 variants read as seed 0. A reused piece is trusted only while its files still
have the size and SHA-256 recorded when it was made (`Recorded.verify`); a changed, truncated or missing file makes that piece (and
the latency pass) run again. Version-1 states (no hashes) are read and their pieces re-verified by
redoing them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graft_edge.errors import GraftError
from graft_edge.fileio import write_json
from graft_edge.workflows.chain import Link
from graft_edge.workflows.records import Recorded, from_dict, now

STATE_FILE = "frontier_state.json"
STATE_SCHEMA = "graft-edge/frontier-state"
STATE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


@dataclass
class FormatRecord(Recorded):
    """One format of one variant: its artefact, export check and accuracy on the exported file."""

    status: str = "pending"  # ok | error: <one line> | pending
    error: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    export_seconds: float | None = None
    accuracy: dict[str, Any] | None = None  # mAP, R1, ... (fractions) or {"skipped": why}


@dataclass
class VariantRecord(Link):
    """One size: its checkpoint (a link of the prune chain: the pruned + finetuned model) and its formats."""

    formats: dict[str, FormatRecord] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantRecord:
        data = dict(data)
        if "checkpoint" in data and "path" not in data:  # version 1
            data["path"] = data.pop("checkpoint")
        v = from_dict(cls, data)
        v.formats = {k: from_dict(FormatRecord, {**r, "path": r.get("path", r.get("artefact", ""))})
                     for k, r in (data.get("formats") or {}).items()}
        return v


@dataclass
class LatencyRecord:
    """One interleaved timing pass over every evaluated artefact.

    `results[key]` is `profile.stats.LatencyStats.to_dict()`: its `*_ms` fields are per call (batch
    `batch`), `per_sample_ms` is p50 / batch.
    """

    keys: list[str] = field(default_factory=list)  # "variant/format", sorted
    hashes: dict[str, str] = field(default_factory=dict)  # key -> artefact SHA-256 when it was timed
    batch: int = 1
    device: str = "cpu"
    threads: int | None = None
    modalities: list[str] | None = None  # the subset timed (--modalities); None: every trained modality
    dtype: str = "fp32"  # what the PyTorch checkpoints ran at
    measured: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    loadavg: list[float | None] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    flops: dict[str, int | None] = field(default_factory=dict)  # key -> FLOPs per sample (the roofline)
    precision: dict[str, str] = field(default_factory=dict)  # key -> the precision it ran at
    peaks: dict[str, Any] | None = None  # the machine's GEMM peaks (graft_edge.profile.peaks), None: not measured


@dataclass
class FrontierState:
    """Everything a frontier folder holds."""

    source: dict[str, Any]  # path, sha256, params of the dense model
    settings: dict[str, Any]  # what finished variants depend on (FrontierSettings.identity)
    created: str = field(default_factory=now)
    updated: str = ""
    variants: dict[str, VariantRecord] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    latency: LatencyRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": STATE_SCHEMA, "version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontierState:
        state = cls(source=data["source"], settings=data["settings"], created=data.get("created", now()),
                    updated=data.get("updated", ""), order=list(data.get("order") or []))
        state.variants = {k: VariantRecord.from_dict(v) for k, v in (data.get("variants") or {}).items()}
        lat = data.get("latency")
        state.latency = from_dict(LatencyRecord, lat) if lat else None
        return state


def load_state(out: Path) -> FrontierState | None:
    """The state of OUT, or None for a fresh folder; GraftError for an unreadable one."""
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraftError(f"{path} is unreadable ({exc}); remove it or pass --overwrite") from None
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA or data.get("version") not in READABLE_VERSIONS:
        raise GraftError(f"{path} is not a graft-edge frontier state of version {STATE_VERSION}; pass --overwrite")
    try:
        return FrontierState.from_dict(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise GraftError(f"{path} is malformed ({type(exc).__name__}: {exc}); pass --overwrite") from None


def save_state(out: Path, state: FrontierState) -> None:
    """Atomically write the state."""
    state.updated = now()
    write_json(out / STATE_FILE, state.to_dict())
