"""The accuracy-efficiency frontier: prune to each target (each from the previous), finetune, export,
evaluate the exported artefacts, time them side by side, and report (CSV / JSON / Markdown / PNG).

Layout of OUT::

    frontier_state.json          resumable state (atomic writes after every finished piece)
    variants/<name>/model.pt     the pruned + finetuned checkpoint of each target ("dense" = the source)
    variants/<name>/export/      its exported artefacts (model.onnx, model.int8-dynamic.onnx, ...)
    frontier.csv / .json / .md / .png

Without a dataset the frontier is latency only (sizes, files and speed of an architecture before it
is trained): no finetuning, no calibrated INT8, no mAP.

Resume rules: a variant whose checkpoint is recorded is not pruned again; a (variant, format) whose
accuracy is recorded is not exported or evaluated again; failed pieces are retried.  Latencies are
always measured in one interleaved pass over every artefact (so their ratios are comparable on a
shared, noisy machine): a rerun that adds artefacts, or changes the timing batch, re-times all of
them; a rerun with nothing new re-times nothing.
"""
from __future__ import annotations

import datetime as _dt
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from graft_edge.errors import GraftError
from graft_edge.fileio import sha256_file, write_json
from graft_edge.profile.bench import one_line, size_on_disk
from graft_edge.units import parse_size

STATE_FILE = "frontier_state.json"
STATE_SCHEMA = "graft-edge/frontier-state"
STATE_VERSION = 1

# frontier format name -> export artefact kind (None: the PyTorch checkpoint itself)
FORMATS: dict[str, str | None] = {
    "torch": None,
    "onnx": "onnx-fp32",
    "int8": "onnx-int8-dynamic",
    "int8-static": "onnx-int8-static",
    "fp16": "onnx-fp16",
    "trt": "trt-fp16",
    "trt-fp32": "trt-fp32",
    "trt-fp16": "trt-fp16",
    "trt-int8": "trt-int8",
}
DEFAULT_FORMATS = ("torch", "onnx", "int8")

Log = Callable[[str], None]
ProgressHook = Callable[[str, "int | None"], Callable[[int], None]]


def _no_progress(description: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """'torch,onnx,int8' -> ('torch', 'onnx', 'int8'); unknown names -> one line listing the accepted ones."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise GraftError(f"unknown format {bad[0] if bad else text!r}: expected a comma-separated list of "
                         f"{', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def parse_targets(text: str | Sequence[str]) -> tuple[str, ...]:
    """'80%,70%,60%' or '76M,70M' -> the raw target strings (resolved against the model later)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    if not items:
        raise GraftError("--targets: expected a comma-separated list like 80%,70%,60% or 76M,70M,60M")
    for item in items:  # syntax and range now, before any data, training or pruning
        try:
            parse_size(item, current=1_000_000)
        except GraftError as exc:
            raise GraftError(f"--targets {item!r}: {exc}") from None
    return tuple(items)


@dataclass(frozen=True)
class FrontierSettings:
    """Everything that decides the frontier (the CLI's options, as data)."""

    targets: tuple[str, ...]
    formats: tuple[str, ...] = DEFAULT_FORMATS
    method: str = "structured"
    finetune_epochs: int = 1
    steps: int | None = None  # prune(+finetune) steps per target; None: ~20% of the remaining size per step
    round_to: int = 8
    batch: int = 1  # latency batch (per-sample ms reported)
    warmup: int = 3
    iters: int = 20  # timed calls per artefact, spread over `rounds` interleaved rounds
    rounds: int = 5
    threads: int | None = None
    device: str = "cpu"
    eval_batch_size: int = 128
    calib_samples: int = 256

    def validated(self) -> "FrontierSettings":
        """Checked copy (GraftError on the first bad field)."""
        from graft_edge.compress import normalize_method

        fmts = parse_formats(self.formats)
        targets = parse_targets(self.targets)
        if self.finetune_epochs < 0:
            raise GraftError(f"--finetune-epochs {self.finetune_epochs}: expected 0 or more")
        for name, v in (("--batch", self.batch), ("--iters", self.iters), ("--rounds", self.rounds),
                        ("--eval-batch-size", self.eval_batch_size)):
            if v < 1:
                raise GraftError(f"{name} {v}: expected a positive integer")
        if self.warmup < 0:
            raise GraftError(f"--warmup {self.warmup}: expected 0 or more")
        if self.steps is not None and self.steps < 1:
            raise GraftError(f"--steps {self.steps}: expected a positive integer")
        return replace(self, formats=fmts, targets=targets, method=normalize_method(self.method))

    def identity(self) -> dict[str, Any]:
        """The settings a finished variant depends on (a rerun must match them)."""
        return {"method": self.method, "finetune_epochs": self.finetune_epochs, "steps": self.steps,
                "round_to": self.round_to}


@dataclass
class FrontierResult:
    """Rows (one per variant x format), the report files and what this call did."""

    out_dir: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]
    done: list[str] = field(default_factory=list)  # pieces computed in this call
    skipped: list[str] = field(default_factory=list)  # pieces reused from OUT
    speedup_note: str = ""


# ------------------------------------------------------------------------------------------ state

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_state(out: Path) -> dict[str, Any] | None:
    """The state of OUT, or None for a fresh folder; GraftError for an unreadable one."""
    import json

    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GraftError(f"{path} is unreadable ({exc}); remove it or pass --overwrite") from None
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or state.get("version") != STATE_VERSION:
        raise GraftError(f"{path} is not a graft-edge frontier state of version {STATE_VERSION}; pass --overwrite")
    return state


def save_state(out: Path, state: dict[str, Any]) -> None:
    """Atomically write the state (temp file + rename)."""
    state["updated"] = _now()
    write_json(out / STATE_FILE, state)


def _rel(out: Path, p: Path | str) -> str:
    p = Path(p)
    try:
        return str(p.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(p.resolve())


def _abs(out: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else out / q


def _variant_name(target_params: int) -> str:
    return f"t{target_params}"


def _order_key(name: str) -> tuple[int, int]:
    """dense first, then the variants from the largest to the smallest target."""
    return (0, 0) if name == "dense" else (1, -int(name[1:]))


# ------------------------------------------------------------------------------------------ pieces

def _prune_variant(prev_ckpt: Path, dest: Path, target: int, settings: FrontierSettings, data_root: Path,
                   progress: ProgressHook, label: str) -> dict[str, Any]:
    """Prune the checkpoint `prev_ckpt` to `target`, finetuning after every step; save to `dest`."""
    from graft_edge.checkpoint import load_model, save_checkpoint
    from graft_edge.compress import check_compatible, prune_to_target
    from graft_edge.model import embedding_params

    model, ckpt = load_model(prev_ckpt)
    check_compatible(settings.method, ckpt.history, ckpt.arch, name=str(prev_ckpt))
    cfg = ckpt.config
    advance = progress(f"{label}: prune + finetune", None)
    finetune_fn = None
    finetune_log: list[dict[str, Any]] = []
    if settings.finetune_epochs > 0:
        from graft_edge.train import finetune

        def finetune_fn(m: Any, after_step: Any) -> Any:
            def hook(mm: Any) -> None:
                if after_step is not None:
                    after_step(mm)
                advance(1)

            m, metrics = finetune(m, cfg, data_root, settings.finetune_epochs, after_step=hook, eval_at_end=False)
            finetune_log.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
            return m, metrics

    started = time.perf_counter()
    model, arch, history = prune_to_target(model, cfg, target=target, method=settings.method, steps=settings.steps,
                                           round_to=settings.round_to, finetune_fn=finetune_fn,
                                           history=list(ckpt.history))
    save_checkpoint(dest, model, cfg, arch=arch if arch is not None else ckpt.arch, history=history,
                    meta={"frontier_target": int(target)})
    return {"params": embedding_params(model), "params_nonzero": embedding_params(model, nonzero=True),
            "seconds": time.perf_counter() - started, "finetune": finetune_log,
            "steps": len(history) - len(ckpt.history)}


def _export_formats(ckpt: Path, export_dir: Path, formats: Sequence[str], settings: FrontierSettings,
                    data_root: Path | None, progress: ProgressHook, label: str) -> dict[str, dict[str, Any]]:
    """Export `ckpt` to the (non-torch) `formats`; {format: {status, artefact, seconds, parity}}."""
    from graft_edge.export import ExportOptions, export_model

    kinds = {f: FORMATS[f] for f in formats if FORMATS[f] is not None}
    if not kinds:
        return {}
    wanted = set(kinds.values())
    int8 = tuple(m for m, k in (("dynamic", "onnx-int8-dynamic"), ("static", "onnx-int8-static"))
                 if k in wanted or (m == "static" and "trt-int8" in wanted))
    trt = any(k.startswith("trt-") for k in wanted)
    hi = max(settings.batch, settings.eval_batch_size)
    opts = ExportOptions(onnx="onnx-fp32" in wanted, int8=int8, fp16=("onnx-fp16" in wanted or "trt-fp16" in wanted),
                         trt=trt, batch=f"1:{settings.batch}:{hi}",
                         calib_data=str(data_root) if data_root is not None else None,
                         calib_samples=settings.calib_samples)
    advance = progress(f"{label}: export {','.join(formats)}", None)
    started = time.perf_counter()
    out: dict[str, dict[str, Any]] = {}
    try:
        result = export_model(ckpt, export_dir, opts, log=lambda msg: advance(1), raise_on_failure=False)
    except Exception as exc:  # bad options / checkpoint: every requested format fails with the same line
        msg = one_line(exc)
        return {f: {"status": f"error: {msg}", "error": msg} for f in kinds}
    seconds = time.perf_counter() - started
    for fmt, kind in kinds.items():
        art = result.get(kind)
        if art is None:
            why = next((f for f in result.failures if kind in f), None) or "; ".join(result.failures) or \
                "not produced by the exporter"
            out[fmt] = {"status": f"error: {why}", "error": why}
        elif art.status != "ok":
            why = art.message or "failed its check"
            out[fmt] = {"status": f"error: {why}", "error": why}
        else:
            out[fmt] = {"status": "ok", "error": None, "artefact": str(art.path), "parity": art.parity,
                        "export_seconds": seconds}
    return out


def _evaluate(path: Path, settings: FrontierSettings, data_root: Path, progress: ProgressHook,
              label: str) -> dict[str, Any]:
    from graft_edge.evaluation import evaluate_embedder
    from graft_edge.runtime import load_embedder

    emb = load_embedder(path, device=settings.device, threads=settings.threads)
    advance = progress(f"{label}: mAP", None)
    started = time.perf_counter()
    acc = evaluate_embedder(emb, data_root, batch_size=settings.eval_batch_size, progress=advance)
    acc["seconds"] = time.perf_counter() - started
    return acc


def _loadavg() -> float | None:
    """1-minute load average (None where the OS does not report it)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _measure_latency(state: dict[str, Any], out: Path, settings: FrontierSettings, progress: ProgressHook,
                     log: Log) -> bool:
    """Time every ok artefact side by side; returns True when it measured (False: state already has it)."""
    from graft_edge.profile.hardware import machine_info
    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    keys = []
    for vname, v in state["variants"].items():
        for fmt, rec in v.get("formats", {}).items():
            if rec.get("status") == "ok" and rec.get("accuracy") is not None:
                keys.append(f"{vname}/{fmt}")
    keys.sort()
    lat = state.get("latency") or {}
    if (lat.get("keys") == keys and lat.get("batch") == settings.batch and lat.get("device") == settings.device
            and lat.get("threads") == settings.threads) or not keys:
        return False
    embedders, inputs = {}, {}
    for key in keys:
        vname, fmt = key.split("/", 1)
        path = _abs(out, state["variants"][vname]["formats"][fmt]["artefact"])
        embedders[key] = load_embedder(path, device=settings.device, threads=settings.threads)
        inputs[key] = synthetic_batch(embedders[key].info, settings.batch)
    per_round = max(1, -(-settings.iters // settings.rounds))
    total = len(keys) * (settings.warmup + per_round * settings.rounds)
    log(f"timing {len(keys)} artefacts side by side: batch {settings.batch}, {settings.rounds} rounds x {per_round} "
        f"calls each")
    advance = progress(f"latency (batch {settings.batch}, interleaved)", total)
    load_before = _loadavg()
    times = interleaved_latency(embedders, inputs, rounds=settings.rounds, iters_per_round=per_round,
                                warmup=settings.warmup, on_iter=advance)
    state["latency"] = {"keys": keys, "batch": settings.batch, "device": settings.device, "threads": settings.threads,
                        "measured": _now(), "machine": machine_info(), "loadavg": [load_before, _loadavg()],
                        "results": {k: summarize(t, settings.batch).to_dict() for k, t in times.items()}}
    return True


# ------------------------------------------------------------------------------------------ the loop

NEEDS_DATA = ("int8-static", "trt-int8")  # formats calibrated on real images


def _check_latency_only(settings: FrontierSettings) -> None:
    """Without --data nothing can be finetuned, calibrated or evaluated: say which option needs it."""
    if settings.finetune_epochs > 0:
        raise GraftError(f"--finetune-epochs {settings.finetune_epochs} needs --data ROOT (the dataset to finetune on); "
                         "without --data the frontier measures latency only: pass --finetune-epochs 0")
    static = [f for f in settings.formats if f in NEEDS_DATA]
    if static:
        usable = ", ".join(f for f in FORMATS if f not in NEEDS_DATA)
        raise GraftError(f"--formats {static[0]} needs --data ROOT (its calibration images); without --data use "
                         f"any of {usable}")


def _resolve_targets(model_path: Path, data_root: Path | None,
                     settings: FrontierSettings) -> tuple[int, list[tuple[str, int]]]:
    """The dense size the targets refer to and the targets as (text, count), largest first; all checked."""
    from graft_edge.checkpoint import load_model
    from graft_edge.compress import counted_size, method_floor
    from graft_edge.data import dataset_modalities
    from graft_edge.units import format_count, parse_size

    if not model_path.is_file():
        raise GraftError(f"model {model_path} does not exist")
    if model_path.suffix.lower() not in (".pt", ".pth", ".ckpt"):
        raise GraftError(f"model {model_path}: the frontier starts from a PyTorch checkpoint (.pt), not an exported file")
    model, ckpt = load_model(model_path)
    held = dataset_modalities(data_root) if data_root is not None else ckpt.config.model.modalities
    if data_root is None:
        _check_latency_only(settings)
    if any(m not in held for m in ckpt.config.model.modalities):
        raise GraftError(f"--data {data_root} holds {','.join(held)} images but the model takes "
                         f"{','.join(ckpt.config.model.modalities)}")
    dense_count = counted_size(model, settings.method)
    targets: list[tuple[str, int]] = []
    for t in settings.targets:
        n = parse_size(t, dense_count)
        if n >= dense_count:
            raise GraftError(f"--targets {t}: {format_count(n)} is not below the model's {format_count(dense_count)}")
        targets.append((t, n))
    targets.sort(key=lambda x: -x[1])
    if len({n for _, n in targets}) != len(targets):
        raise GraftError(f"--targets {','.join(settings.targets)}: two targets give the same size")
    floor = method_floor(model, settings.method, round_to=settings.round_to)
    if targets and targets[-1][1] < floor:
        t, n = targets[-1]
        raise GraftError(f"--targets {t}: {format_count(n)} is below the smallest size {settings.method} pruning can "
                         f"reach on this model, {format_count(floor)} ({100 * floor / dense_count:.0f}%)")
    return dense_count, targets


def _open_state(out: Path, model_path: Path, settings: FrontierSettings, dense_count: int,
                overwrite: bool) -> dict[str, Any]:
    """OUT's state for this model and settings (a fresh one for a new or overwritten OUT)."""
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out} exists and is not a folder")
    if overwrite and (out / STATE_FILE).exists():
        shutil.rmtree(out / "variants", ignore_errors=True)
        (out / STATE_FILE).unlink()
    out.mkdir(parents=True, exist_ok=True)
    sha = sha256_file(model_path)
    state = load_state(out)
    if state is None:
        return {"schema": STATE_SCHEMA, "version": STATE_VERSION, "created": _now(),
                "source": {"path": str(model_path.resolve()), "sha256": sha, "params": dense_count},
                "settings": settings.identity(), "variants": {}, "order": [], "latency": None}
    if state["source"]["sha256"] != sha:
        raise GraftError(f"{out} holds a frontier of another model ({state['source']['path']}); "
                         "use a new --out or pass --overwrite")
    if state["settings"] != settings.identity():
        diff = [k for k, v in settings.identity().items() if state["settings"].get(k) != v]
        was = ", ".join(f"{k}={state['settings'].get(k)}" for k in diff)
        raise GraftError(f"{out} was built with other settings ({was}); use a new --out or pass --overwrite")
    return state


@dataclass(frozen=True)
class _Job:
    """What every piece of one frontier call needs."""

    out: Path
    model_path: Path
    data_root: Path | None  # None: latency only (no finetuning, calibration or mAP)
    settings: FrontierSettings
    progress: ProgressHook
    log: Log
    result: FrontierResult


def _ensure_variant(job: _Job, state: dict[str, Any], vname: str, label: str, target_text: str | None,
                    target_n: int | None, prev_ckpt: Path) -> dict[str, Any]:
    """The variant's record, pruning `prev_ckpt` to `target_n` first unless its checkpoint is there."""
    from graft_edge.checkpoint import load_model
    from graft_edge.model import embedding_params
    from graft_edge.units import format_count

    out, vdir = job.out, job.out / "variants" / vname
    v = state["variants"].get(vname)
    if v is not None and _abs(out, v["checkpoint"]).is_file():
        job.result.skipped.append(f"{vname}: pruned")
        return v
    ckpt_path = vdir / "model.pt"
    if vname == "dense":  # the source itself, copied for a self-contained OUT
        vdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.model_path, ckpt_path)
        m, _ = load_model(ckpt_path)
        facts = {"params": embedding_params(m), "params_nonzero": embedding_params(m, nonzero=True),
                 "seconds": 0.0, "finetune": [], "steps": 0}
    else:
        s = job.settings
        job.log(f"{label}: pruning {prev_ckpt.parent.name if prev_ckpt != job.model_path else 'dense'} to "
                f"{format_count(target_n)} ({s.method}, finetune {s.finetune_epochs} epoch(s) per step)")
        facts = _prune_variant(prev_ckpt, ckpt_path, target_n, s, job.data_root, job.progress, label)
        job.result.done.append(f"{vname}: pruned")
    v = {"label": label, "target": target_text, "target_params": target_n, "checkpoint": _rel(out, ckpt_path),
         **facts, "formats": {}}
    state["variants"][vname] = v
    save_state(out, state)
    return v


LATENCY_ONLY = "no --data: latency only"


def _needs_accuracy(accuracy: dict[str, Any] | None, data_root: Path | None) -> bool:
    """Whether an artefact still has to be evaluated (a latency-only record is redone once --data is given)."""
    return accuracy is None or (data_root is not None and accuracy.get("mAP") is None)


def _ensure_formats(job: _Job, state: dict[str, Any], vname: str, v: dict[str, Any]) -> None:
    """Export the variant's missing (or failed) formats, then measure mAP on every artefact not yet evaluated."""
    out, settings, label = job.out, job.settings, v["label"]
    ckpt_path = _abs(out, v["checkpoint"])
    todo = [f for f in settings.formats if _needs_accuracy(v["formats"].get(f, {}).get("accuracy"), job.data_root)]
    need_export = [f for f in todo if FORMATS[f] is not None and
                   not (v["formats"].get(f, {}).get("status") == "ok"
                        and _abs(out, v["formats"][f].get("artefact", "")).is_file())]
    if need_export:
        job.log(f"{label}: exporting {','.join(need_export)}")
        exported = _export_formats(ckpt_path, ckpt_path.parent / "export", need_export, settings, job.data_root,
                                   job.progress, label)
        for fmt, rec in exported.items():
            if rec.get("artefact"):
                rec["artefact"] = _rel(out, rec["artefact"])
            v["formats"][fmt] = rec
        save_state(out, state)
    for fmt in settings.formats:
        if fmt not in todo:
            job.result.skipped.append(f"{vname}/{fmt}")
            continue
        if fmt == "torch":
            v["formats"][fmt] = {"status": "ok", "error": None, "artefact": _rel(out, ckpt_path)}
        rec = v["formats"].get(fmt)
        if rec is None or rec.get("status") != "ok":
            continue
        path = _abs(out, rec["artefact"])
        rec["size_bytes"] = size_on_disk(path)
        if job.data_root is None:
            rec["accuracy"] = {"skipped": LATENCY_ONLY}
            job.result.done.append(f"{vname}/{fmt}")
            save_state(out, state)
            continue
        try:
            rec["accuracy"] = _evaluate(path, settings, job.data_root, job.progress, f"{label} {fmt}")
            job.log(f"{label} {fmt}: mAP {100 * rec['accuracy']['mAP']:.1f}  R1 {100 * rec['accuracy']['R1']:.1f}")
            job.result.done.append(f"{vname}/{fmt}")
        except Exception as exc:
            rec["status"], rec["error"] = f"error: {one_line(exc)}", one_line(exc)
            job.log(f"{label} {fmt}: {rec['status']}")
        save_state(out, state)


def run_frontier(model_path: str | Path, data_root: str | Path | None, out_dir: str | Path, settings: FrontierSettings,
                 overwrite: bool = False, progress: ProgressHook = _no_progress,
                 log: Log | None = None) -> FrontierResult:
    """Build (or resume) the frontier of `model_path` in `out_dir`; see the module docstring.

    `data_root` None gives a latency-only frontier (an architecture before training, say): no
    finetuning, no calibrated formats, no mAP.
    """
    from graft_edge.profile.frontier_report import write_reports

    settings = settings.validated()
    model_path, out = Path(model_path), Path(out_dir)
    data_root = Path(data_root) if data_root is not None else None
    dense_count, targets = _resolve_targets(model_path, data_root, settings)  # everything checked: nothing written yet
    state = _open_state(out, model_path, settings, dense_count, overwrite)
    job = _Job(out, model_path, data_root, settings, progress, log or (lambda msg: None),
               FrontierResult(out_dir=out, rows=[], files={}))
    plan = [("dense", "dense", None, None)] + [(_variant_name(n), t, t, n) for t, n in targets]
    state["order"] = sorted(set(state.get("order", [])) | {p[0] for p in plan}, key=_order_key)
    prev_ckpt = model_path
    for vname, label, target_text, target_n in plan:  # each target is pruned from the previous one
        v = _ensure_variant(job, state, vname, label, target_text, target_n, prev_ckpt)
        prev_ckpt = _abs(out, v["checkpoint"])
        _ensure_formats(job, state, vname, v)
    if _measure_latency(state, out, settings, progress, job.log):
        job.result.done.append("latency")
        save_state(out, state)
    else:
        job.result.skipped.append("latency")
    job.result.rows, job.result.files, job.result.speedup_note = write_reports(state, out, settings.formats)
    return job.result
