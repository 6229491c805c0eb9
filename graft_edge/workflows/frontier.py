"""The accuracy-efficiency frontier: prune to each target (each from the previous), finetune, export,
evaluate the exported artefacts, time them side by side, and report (CSV / JSON / Markdown / PNG).

Layout of OUT::

    frontier_state.json          resumable, typed state (frontier_state.py), saved after every finished piece
    variants/<name>/model.pt     the pruned + finetuned checkpoint of each target ("dense" = the source)
    variants/<name>/export/      its exported artefacts (model.onnx, model.int8-dynamic.onnx, ...)
    frontier.csv / .json / .md / .png

Without a dataset the frontier is latency only (sizes, files and speed of an architecture before it
is trained): no finetuning, no calibrated formats, no mAP.

Pruning goes through the same resumable prune run as `graft-edge prune` (workflows.prune). Resume
rules: a variant whose checkpoint still has its recorded size and hash is not pruned again; a
(variant, format) whose artefact still matches its record and whose accuracy is recorded is not
exported or evaluated again; failed or changed pieces are redone. Latencies are measured in one
interleaved pass over every artefact (ratios comparable on a shared machine): a rerun re-times
everything when any artefact, the batch, device or threads changed, and nothing otherwise.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from graft_edge.checkpoint import load_model
from graft_edge.compress import PruneMethod, PruneSpec, get_method, parse_targets
from graft_edge.config import GraftConfig
from graft_edge.data import dataset_modalities
from graft_edge.errors import GraftError, one_line
from graft_edge.evaluation import NEEDS_EVERY_SENSOR, evaluate_embedders, evaluate_subsets, score_line, worst_columns
from graft_edge.export import ExportOptions, export_model
from graft_edge.fileio import sha256_file
from graft_edge.formats import DEFAULT_FRONTIER_FORMATS, FORMATS, Format, parse_formats
from graft_edge.model.embedder import DTYPES
from graft_edge.outdir import OutputLock
from graft_edge.profile.hardware import machine_info
from graft_edge.profile.latency import interleaved_latency, synthetic_batch
from graft_edge.profile.peaks import embedder_flops, embedders_peaks
from graft_edge.profile.progress import ProgressHook, no_progress
from graft_edge.profile.stats import summarize
from graft_edge.retrieval.metrics import RerankConfig
from graft_edge.runtime import RUNTIMES, load_embedder
from graft_edge.runtime.presence import parse_subset, supports_subsets
from graft_edge.units import Size, format_count
from graft_edge.verdicts import DEFAULT_MARGIN
from graft_edge.workflows.chain import Chain, Level
from graft_edge.workflows.frontier_report import write_reports
from graft_edge.workflows.frontier_seeds import order_key as _order_key
from graft_edge.workflows.frontier_seeds import seed_variant_name
from graft_edge.workflows.frontier_state import (
    STATE_FILE,
    FormatRecord,
    FrontierState,
    LatencyRecord,
    VariantRecord,
    load_state,
    save_state,
)
from graft_edge.workflows.frontier_verdicts import summary as verdict_summary
from graft_edge.workflows.prune import PruneRequest
from graft_edge.workflows.records import now, resolve

Log = Callable[[str], None]
LATENCY_ONLY = "no --data: latency only"


@dataclass(frozen=True)
class FrontierSettings:
    """Everything that decides the frontier (the CLI's options, as data)."""

    targets: tuple[Size | str, ...]  # sizes (strings are parsed by validated())
    formats: tuple[Format | str, ...] = DEFAULT_FRONTIER_FORMATS  # rows (names are parsed by validated())
    method: PruneMethod | str = "structured"  # a name is parsed by validated()
    finetune_epochs: int = 1
    steps: int | None = None  # prune(+finetune) steps per target; None: ~20% of the remaining size per step
    round_to: int = 8
    batch: int = 1  # latency batch (per-sample ms reported)
    warmup: int = 3
    iters: int = 20  # timed calls per artefact, spread over `rounds` interleaved rounds
    rounds: int = 5
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"  # what PyTorch checkpoints run at (exported artefacts: their own precision)
    peaks: bool = True  # measure the shape-true GEMM peaks on first use (graft_edge.profile.peaks); False: cached only
    eval_batch_size: int = 128
    calib_samples: int = 256
    rerank: bool = False  # also k-reciprocal re-ranked mAP/R1 of every artefact (accuracy columns *_rerank)
    modalities: tuple[str, ...] | None = None  # evaluate and time the artefacts on this subset (missing sensors)
    distill: bool | None = None  # distil from the dense model; None: on for structured with finetuning
    seeds: int = 1  # finetuning + evaluation repeated with this many seeds; rows report mean ± std
    robustness: bool = False  # also every subset of the sensors on every artefact: worst_mAP, worst_subset columns
    margin: float = DEFAULT_MARGIN  # mAP fraction within which a difference is "equivalent" (verdicts; reports only)

    def validated(self) -> FrontierSettings:
        """Checked copy (GraftError on the first bad field)."""
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
        if self.seeds < 1:
            raise GraftError(f"--seeds {self.seeds}: expected a positive integer")
        if not 0 <= self.margin < 1:
            raise GraftError(f"--margin {100 * self.margin:g}: expected mAP points in [0, 100)")
        if self.seeds > 1 and self.finetune_epochs == 0:
            raise GraftError(f"--seeds {self.seeds} needs --finetune-epochs of 1 or more (without finetuning every "
                             "seed gives the same model)")
        if self.distill and self.finetune_epochs == 0:
            raise GraftError("--distill needs --finetune-epochs of 1 or more (the teacher guides finetuning)")
        if self.robustness and self.modalities:
            raise GraftError("--robustness evaluates every subset of the sensors: leave out --modalities")
        if self.steps is not None and self.steps < 1:
            raise GraftError(f"--steps {self.steps}: expected a positive integer")
        if self.threads is not None and self.threads < 1:
            raise GraftError(f"--threads {self.threads}: expected a positive integer")
        dtype = self.dtype.strip().lower()
        if dtype not in DTYPES:
            raise GraftError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        return replace(self, formats=fmts, targets=targets, method=get_method(self.method), dtype=dtype)

    def identity(self) -> dict[str, Any]:
        """The settings a finished variant depends on (a rerun must match them)."""
        return {"method": get_method(self.method).name, "finetune_epochs": self.finetune_epochs, "steps": self.steps,
                "round_to": self.round_to, "distill": self.prune_request(None).distilling}

    def prune_request(self, data_root: Path | None, target: int | None = None, seed: int = 0) -> PruneRequest:
        """The prune run of one variant (finetuning only with a dataset) for finetuning seed `seed`."""
        return PruneRequest(target=target, method=self.method, steps=self.steps, round_to=self.round_to,
                            data=data_root if self.finetune_epochs > 0 else None, finetune_epochs=self.finetune_epochs,
                            evaluate=False, distill=self.distill, seed_offset=seed)


@dataclass
class FrontierResult:
    """Rows (one per variant x format), the report files and what this call did."""

    out_dir: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path]
    done: list[str] = field(default_factory=list)  # pieces computed in this call
    skipped: list[str] = field(default_factory=list)  # pieces reused from OUT
    speedup_note: str = ""
    verdict_note: str = ""  # every verdict against dense with its 95% interval, and the rule (frontier_verdicts)


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
    cfg: GraftConfig | None = None  # the source checkpoint's config: its validation split (data.val_fraction)

    @property
    def has_val(self) -> bool:
        """Whether artefacts are also evaluated on the validation split (held-out training ids)."""
        return self.data_root is not None and self.cfg is not None and self.cfg.data.val_fraction > 0


# ------------------------------------------------------------------------------------------ checks

def _check_latency_only(settings: FrontierSettings) -> None:
    """Without --data nothing can be finetuned, calibrated or evaluated: say which option needs it."""
    if settings.finetune_epochs > 0:
        raise GraftError(f"--finetune-epochs {settings.finetune_epochs} needs --data ROOT (the dataset to finetune "
                         "on); without --data the frontier measures latency only: pass --finetune-epochs 0")
    static = [f.name for f in settings.formats if f.needs_calibration]
    if static:
        usable = ", ".join(n for n, f in FORMATS.items() if not f.needs_calibration)
        raise GraftError(f"--formats {static[0]} needs --data ROOT (its calibration images); without --data use "
                         f"any of {usable}")


def _resolve_targets(model_path: Path, data_root: Path | None,
                     settings: FrontierSettings) -> tuple[int, list[tuple[str, int]], GraftConfig]:
    """The dense size the targets refer to, the targets as (text, count), largest first, all checked; and the
    checkpoint's config."""
    if not model_path.is_file():
        raise GraftError(f"model {model_path} does not exist")
    if model_path.suffix.lower() not in RUNTIMES["torch"].suffixes:
        raise GraftError(f"model {model_path}: the frontier starts from a PyTorch checkpoint (.pt), not an exported "
                         "file")
    model, ckpt = load_model(model_path)
    held = dataset_modalities(data_root) if data_root is not None else ckpt.config.model.modalities
    if data_root is None:
        _check_latency_only(settings)
    if any(m not in held for m in ckpt.config.model.modalities):
        raise GraftError(f"--data {data_root} holds {','.join(held)} images but the model takes "
                         f"{','.join(ckpt.config.model.modalities)}")
    if settings.modalities is not None:  # checked before the first variant is pruned
        parse_subset(settings.modalities, ckpt.config.model.modalities)
    method = settings.method
    dense_count = method.counted_size(model)
    targets: list[tuple[str, int]] = []
    for t in settings.targets:
        n = t.of(dense_count)
        if n >= dense_count:
            raise GraftError(f"--targets {t}: {format_count(n)} is not below the model's {format_count(dense_count)}")
        targets.append((str(t), n))
    targets.sort(key=lambda x: -x[1])
    if len({n for _, n in targets}) != len(targets):
        raise GraftError(f"--targets {','.join(map(str, settings.targets))}: two targets give the same size")
    floor = method.floor(model, PruneSpec(method, round_to=settings.round_to))
    if targets and targets[-1][1] < floor:
        t, n = targets[-1]
        raise GraftError(f"--targets {t}: {format_count(n)} is below the smallest size {method.name} pruning can "
                         f"reach on this model, {format_count(floor)} ({100 * floor / dense_count:.0f}%)")
    return dense_count, targets, ckpt.config


def _open_state(out: Path, model_path: Path, settings: FrontierSettings, dense_count: int,
                overwrite: bool) -> FrontierState:
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
        return FrontierState(source={"path": str(model_path.resolve()), "sha256": sha, "params": dense_count},
                             settings=settings.identity())
    if state.source["sha256"] != sha:
        raise GraftError(f"{out} holds a frontier of another model ({state.source['path']}); "
                         "use a new --out or pass --overwrite")
    if state.settings != settings.identity():
        diff = [k for k, v in settings.identity().items() if state.settings.get(k) != v]
        was = ", ".join(f"{k}={state.settings.get(k)}" for k in diff)
        raise GraftError(f"{out} was built with other settings ({was}); use a new --out or pass --overwrite")
    return state


# ------------------------------------------------------------------------------------------ pieces

def _ensure_variant(job: _Job, state: FrontierState, vname: str, label: str, target_text: str | None,
                    target_n: int | None, prev_ckpt: Path, seed: int = 0) -> VariantRecord:
    """The variant's record: a link of the prune chain (`prev_ckpt` pruned to `target_n`; dense: the source copied),
    reused while its checkpoint is verified."""
    chain = Chain(job.out, state.variants, lambda: save_state(job.out, state), job.log, job.result.done,
                  job.result.skipped)
    level = Level(vname, label, job.out / "variants" / vname / "model.pt", target_text, target_n, seed)
    request = None
    if vname != "dense":
        s = job.settings
        request = s.prune_request(job.data_root, int(target_n), seed)
        if not (state.variants.get(vname) and state.variants[vname].verify(job.out)):
            job.log(f"{label}: pruning {prev_ckpt.parent.name if prev_ckpt != job.model_path else 'dense'} to "
                    f"{format_count(target_n)} ({s.method.name}, finetune {s.finetune_epochs} epoch(s) per step"
                    + (f", seed {seed}" if s.seeds > 1 else "") + ")")
    bar: list[Callable[[int], None]] = []  # the progress bar, made when pruning starts

    def advance(done: int, total: int) -> None:
        if not bar:
            bar.append(job.progress(f"{label}: prune + finetune", None))
        bar[0](1)

    return chain.ensure(level, prev_ckpt, request, make=VariantRecord, progress=advance)


def _export(job: _Job, ckpt: Path, formats: Sequence[Format], label: str) -> dict[str, FormatRecord]:
    """Export `ckpt` to the (non-torch) `formats`; one record per format name."""
    kinds = {f.name: f.kind for f in formats if f.kind}
    if not kinds:
        return {}
    s = job.settings
    opts = ExportOptions(formats=tuple(f for f in formats if f.kind),
                         batch=f"1:{s.batch}:{max(s.batch, s.eval_batch_size)}",
                         calib_data=str(job.data_root) if job.data_root is not None else None,
                         calib_samples=s.calib_samples)
    advance = job.progress(f"{label}: export {','.join(kinds)}", None)
    started = time.perf_counter()
    out: dict[str, FormatRecord] = {}
    try:
        result = export_model(ckpt, ckpt.parent / "export", opts, log=lambda msg: advance(1), raise_on_failure=False)
    except Exception as exc:  # bad options / checkpoint: every requested format fails with the same line
        msg = one_line(exc)
        return {f: FormatRecord(status=f"error: {msg}", error=msg) for f in kinds}
    seconds = time.perf_counter() - started
    for fmt, kind in kinds.items():
        art = result.get(kind)
        if art is None or art.status != "ok":
            why = (art.message or "failed its check") if art is not None else (
                next((f for f in result.failures if kind in f), None) or "; ".join(result.failures)
                or "not produced by the exporter")
            out[fmt] = FormatRecord(status=f"error: {why}", error=why)
            continue
        rec = FormatRecord(status="ok", parity=art.parity, export_seconds=seconds)
        rec.record(job.out, art.path)
        out[fmt] = rec
    return out


def _robustness(job: _Job, emb: Any, advance: Any) -> dict[str, Any]:
    """--robustness: worst_mAP, worst_subset and the per-subset rows of one artefact (evaluation.worst_columns), or
    why it has none."""
    if not supports_subsets(emb.info):
        return {"worst_error": NEEDS_EVERY_SENSOR}
    s = job.settings
    res = worst_columns(evaluate_subsets(emb, job.data_root, batch_size=s.eval_batch_size, progress=advance,
                                         rerank_cfg=RerankConfig() if s.rerank else None))
    return {k: res[k] for k in ("worst_mAP", "worst_subset", "subsets")}


def _needs_work(rec: FormatRecord | None, out: Path, data_root: Path | None, rerank: bool = False,
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


def _ensure_formats(job: _Job, state: FrontierState, vname: str, v: VariantRecord) -> None:
    """Export the variant's missing, failed or changed formats, then measure mAP on every artefact not yet evaluated."""
    out, label = job.out, v.label
    ckpt_path = resolve(out, v.path)
    todo = [f for f in job.settings.formats
            if _needs_work(v.formats.get(f.name), out, job.data_root, job.settings.rerank, job.settings.modalities,
                           job.settings.dtype if not f.kind else "", job.has_val, job.settings.robustness)]
    stale = [f for f in todo if f.kind and not (v.formats.get(f.name) and v.formats[f.name].verify(out))]
    if stale:
        job.log(f"{label}: exporting {','.join(f.name for f in stale)}")
        v.formats.update(_export(job, ckpt_path, stale, label))
        save_state(out, state)
    ready = []
    for row in job.settings.formats:
        fmt = row.name
        if row not in todo:
            job.result.skipped.append(f"{vname}/{fmt}")
            continue
        if not row.kind:  # the checkpoint itself
            rec = FormatRecord(status="ok")
            rec.record(out, ckpt_path)
            v.formats[fmt] = rec
        rec = v.formats.get(fmt)
        if rec is not None and rec.status == "ok":
            ready.append(fmt)
    if ready:
        _evaluate_formats(job, state, vname, ready)


def _evaluate_formats(job: _Job, state: FrontierState, vname: str, fmts: Sequence[str]) -> None:
    """Test (and validation) accuracy of a variant's artefacts, every image decoded once for all of them; saved."""
    s, v = job.settings, state.variants[vname]
    results: dict[str, Any] = {f: {"skipped": LATENCY_ONLY} for f in fmts} if job.data_root is None else {}
    embedders = {}
    for fmt in fmts if job.data_root is not None else ():
        try:
            embedders[fmt] = load_embedder(resolve(job.out, v.formats[fmt].path), device=s.device, threads=s.threads,
                                           modalities=s.modalities, dtype=s.dtype)
        except Exception as exc:  # noqa: BLE001 - recorded as this format's error
            results[fmt] = exc
    started = time.perf_counter()
    results.update(evaluate_embedders(embedders, job.data_root, job.cfg if job.has_val else None, s.eval_batch_size,
                                      job.progress(f"{v.label}: mAP ({','.join(embedders)})", None),
                                      RerankConfig() if s.rerank else None) if embedders else {})
    for fmt in fmts:
        rec, acc = v.formats[fmt], results[fmt]
        if isinstance(acc, Exception):
            rec.status, rec.error = f"error: {one_line(acc)}", one_line(acc)
            job.log(f"{v.label} {fmt}: {rec.status}")
            continue
        if fmt in embedders:  # seconds: each artefact's share of the pass
            extra = embedders[fmt].info.extra
            acc.update(seconds=(time.perf_counter() - started) / len(embedders), precision=extra.get("precision", "fp32"),
                       modalities=list(s.modalities) if s.modalities else None)
            if s.robustness:
                acc.update(_robustness(job, embedders[fmt], job.progress(f"{v.label} {fmt}: mAP of every sensor subset",
                                                                         None)))
            job.log(f"{v.label} {fmt}: {score_line(acc, ('mAP', 'R1'))}")
        rec.accuracy = acc
        job.result.done.append(f"{vname}/{fmt}")
    save_state(job.out, state)


def _loadavg() -> float | None:
    """1-minute load average (None where the OS does not report it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _measure_latency(job: _Job, state: FrontierState) -> bool:
    """Time every evaluated artefact side by side; True when it measured (False: the state already has it)."""
    s = job.settings
    ok = {f"{vname}/{fmt}": rec for vname, v in state.variants.items() for fmt, rec in v.formats.items()
          if rec.status == "ok" and rec.accuracy is not None and v.seed == 0}  # seeds share seed 0's architecture
    keys = sorted(ok)
    hashes = {k: ok[k].sha256 or "" for k in keys}
    lat = state.latency
    if not keys or (lat is not None and lat.keys == keys and lat.hashes == hashes and lat.batch == s.batch
                    and lat.device == s.device and lat.threads == s.threads and lat.dtype == s.dtype
                    and lat.modalities == (list(s.modalities) if s.modalities else None)):
        return False
    embedders = {k: load_embedder(resolve(job.out, ok[k].path), device=s.device, threads=s.threads,
                                  modalities=s.modalities, dtype=s.dtype) for k in keys}
    inputs = {k: synthetic_batch(e.info, s.batch) for k, e in embedders.items()}
    per_round = max(1, -(-s.iters // s.rounds))
    job.log(f"timing {len(keys)} artefacts side by side: batch {s.batch}, {s.rounds} rounds x {per_round} calls each")
    advance = job.progress(f"latency (batch {s.batch}, interleaved)", len(keys) * (s.warmup + per_round * s.rounds))
    load_before = _loadavg()
    times = interleaved_latency(embedders, inputs, rounds=s.rounds, iters_per_round=per_round, warmup=s.warmup,
                                on_iter=advance)
    flops = {k: embedder_flops(e) for k, e in embedders.items()}
    precision = {k: str(e.info.extra.get("precision") or "fp32") for k, e in embedders.items()}
    peaks, true_peaks = embedders_peaks(embedders, precision, s.batch, s.threads, s.device, s.peaks, job.progress)
    state.latency = LatencyRecord(keys=keys, hashes=hashes, batch=s.batch, device=s.device, threads=s.threads,
                                  dtype=s.dtype, modalities=list(s.modalities) if s.modalities else None,
                                  measured=now(), machine=machine_info(), loadavg=[load_before, _loadavg()],
                                  results={k: summarize(t, s.batch).to_dict() for k, t in times.items()},
                                  flops=flops, precision=precision, peaks=peaks, shape_peaks=true_peaks)
    return True


def run_frontier(model_path: str | Path, data_root: str | Path | None, out_dir: str | Path, settings: FrontierSettings,
                 overwrite: bool = False, progress: ProgressHook = no_progress,
                 log: Log | None = None) -> FrontierResult:
    """Build (or resume) the frontier of `model_path` in `out_dir`; see the module docstring.

    `data_root` None gives a latency-only frontier (an architecture before training, say): no
    finetuning, no calibrated formats, no mAP.
    """
    settings = settings.validated()
    model_path, out = Path(model_path), Path(out_dir)
    data_root = Path(data_root) if data_root is not None else None
    dense_count, targets, cfg = _resolve_targets(model_path, data_root, settings)  # all checked: nothing written yet
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out} exists and is not a folder")
    job = _Job(out, model_path, data_root, settings, progress, log or (lambda msg: None),
               FrontierResult(out_dir=out, rows=[], files={}), cfg)
    with OutputLock(out, "frontier"):  # one frontier per OUT
        return _run(job, _open_state(out, model_path, settings, dense_count, overwrite), targets)


def _run(job: _Job, state: FrontierState, targets: list[tuple[str, int]]) -> FrontierResult:
    """run_frontier's work, with OUT locked: every variant and format, then latency and the reports."""
    out = job.out
    seeds = range(job.settings.seeds)
    plan = [("dense", "dense", None, None, 0)] + [(seed_variant_name(f"t{n}", k), t, t, n, k) for k in seeds for t, n in targets]
    state.order = sorted(set(state.order) | {p[0] for p in plan}, key=_order_key)
    prev_ckpt = dense_ckpt = job.model_path
    for vname, label, target_text, target_n, seed in plan:  # each target is pruned from the previous one of its seed
        if targets and target_n == targets[0][1]:
            prev_ckpt = dense_ckpt  # every seed's chain starts from dense
        v = _ensure_variant(job, state, vname, label, target_text, target_n, prev_ckpt, seed)
        prev_ckpt = resolve(out, v.path)
        dense_ckpt = prev_ckpt if vname == "dense" else dense_ckpt
        _ensure_formats(job, state, vname, v)
    if _measure_latency(job, state):
        job.result.done.append("latency")
        save_state(out, state)
    else:
        job.result.skipped.append("latency")
    rows, files, note = write_reports(state, out, [f.name for f in job.settings.formats], seeds=job.settings.seeds,
                                      margin=job.settings.margin)
    job.result.rows, job.result.files, job.result.speedup_note = rows, files, note
    job.result.verdict_note = verdict_summary(rows, job.settings.margin)
    return job.result
