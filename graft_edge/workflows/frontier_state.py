"""The frontier's resumable state, typed: what was pruned, exported, evaluated and timed, with file hashes.

Saved as `frontier_state.json` (schema graft-edge/frontier-state, version 3) after every finished
piece. Version 3 adds the finetuning seed of every variant (`--seeds`: `t<params>-s<k>` variants for
seeds k > 0); version-2 variants read as seed 0. A reused piece is trusted only while its files still
have the size and SHA-256 recorded when it was made (`Recorded.verify`); a changed, truncated or missing file makes that piece (and
the latency pass) run again. Version-1 states (no hashes) are read and their pieces re-verified by
redoing them.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from graft_edge.artefact import artefact_files
from graft_edge.errors import GraftError
from graft_edge.fileio import sha256_file, write_json

STATE_FILE = "frontier_state.json"
STATE_SCHEMA = "graft-edge/frontier-state"
STATE_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


def now() -> str:
    """UTC timestamp for the state."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fingerprint(path: Path) -> tuple[int, str]:
    """(bytes, SHA-256) of an artefact and its companion files (ONNX external data)."""
    files = artefact_files(path)
    size = sum(f.stat().st_size for f in files)
    if len(files) == 1:
        return size, sha256_file(files[0])
    return size, ":".join(sha256_file(f) for f in files)


def _from(cls: Any, data: dict[str, Any]) -> Any:
    """A dataclass from a dict, ignoring unknown keys (older / newer writers)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Recorded:
    """A file a piece produced, with the size and hash it had when the piece finished."""

    path: str = ""  # relative to OUT
    size_bytes: int | None = None
    sha256: str | None = None

    def record(self, out: Path, path: Path) -> None:
        """Remember `path` (relative to OUT when inside it) and its fingerprint."""
        self.path = _rel(out, path)
        self.size_bytes, self.sha256 = fingerprint(path)

    def verify(self, out: Path) -> bool:
        """Whether the file is still exactly what was recorded."""
        p = resolve(out, self.path)
        if not self.path or not p.is_file() or self.sha256 is None:
            return False
        try:
            return fingerprint(p) == (self.size_bytes, self.sha256)
        except OSError:
            return False


@dataclass
class FormatRecord(Recorded):
    """One format of one variant: its artefact, export check and accuracy on the exported file."""

    status: str = "pending"  # ok | error: <one line> | pending
    error: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    export_seconds: float | None = None
    accuracy: dict[str, Any] | None = None  # mAP, R1, ... (fractions) or {"skipped": why}


@dataclass
class VariantRecord(Recorded):
    """One size: its checkpoint (the pruned + finetuned model) and its formats."""

    label: str = ""
    target: str | None = None  # as typed (80%, 60M); None for dense
    target_params: int | None = None
    params: int | None = None
    params_nonzero: int | None = None
    seconds: float = 0.0
    steps: int = 0
    seed: int = 0  # finetuning seed offset (frontier --seeds); dense is seed 0 only
    history: list[dict[str, Any]] = field(default_factory=list)  # the pruning steps this variant added
    formats: dict[str, FormatRecord] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantRecord:
        data = dict(data)
        if "checkpoint" in data and "path" not in data:  # version 1
            data["path"] = data.pop("checkpoint")
        v = _from(cls, data)
        v.formats = {k: _from(FormatRecord, {**r, "path": r.get("path", r.get("artefact", ""))})
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
        state.latency = _from(LatencyRecord, lat) if lat else None
        return state


def _rel(out: Path, p: Path | str) -> str:
    p = Path(p)
    try:
        return str(p.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(p.resolve())


def resolve(out: Path, p: str) -> Path:
    """A recorded path as a Path (relative ones are inside OUT)."""
    q = Path(p)
    return q if q.is_absolute() else out / q


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


def needs_work(rec: FormatRecord | None, out: Path, data_root: Path | None, rerank: bool = False,
               modalities: tuple[str, ...] | None = None, precision: str = "", val: bool = False,
               robustness: bool = False) -> bool:
    """Whether a format still has to be (re)made or evaluated (a latency-only record is redone with --data,
    one without re-ranked / validation / every-subset numbers when --rerank / `val` / --robustness ask for them,
    one of another --modalities subset, a checkpoint evaluated at another --dtype)."""
    if rec is None or rec.status != "ok" or rec.accuracy is None or not rec.verify(out):
        return True
    if robustness and data_root is not None and not {"worst_mAP", "worst_error"} & set(rec.accuracy):
        return True
    if rec.accuracy.get("modalities") != (list(modalities) if modalities else None):
        return True
    if precision and rec.accuracy.get("precision", "fp32") != precision:
        return True
    if val and data_root is not None and "val_mAP" not in rec.accuracy and "val_error" not in rec.accuracy:
        return True
    return data_root is not None and (rec.accuracy.get("mAP") is None or (rerank and "rerank" not in rec.accuracy))
