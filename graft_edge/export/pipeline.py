"""`export_model`: checkpoint -> checked, self-describing deployment artefacts in one folder.

Files written to OUT (NAME defaults to "model"; one per row of graft_edge.formats that was asked for):
  NAME.onnx                 FP32 ONNX (+ NAME.onnx.data when the weights exceed ~1.8 GB)
  NAME.int8-dynamic.onnx    INT8 dynamic quantisation (ONNX Runtime)
  NAME.int8-static.onnx     INT8 static Q/DQ, calibrated on --calib-data (ONNX Runtime, TensorRT)
  NAME.int8-u8s8.onnx       INT8 static Q/DQ with UINT8 asymmetric activations (ONNX Runtime CPU)
  NAME.fused.onnx, NAME.int8-dynamic-fused.onnx   every attention one ORT contrib node (--fused), + dynamic INT8
  NAME.fp16.onnx            FP16 with LayerNorm/Softmax/reductions FP32, FP32 I/O (TensorRT >= 11, GPUs)
  NAME.trt-{fp32,fp16,int8}.engine   TensorRT engines (--trt), + timing.cache
  NAME.openvino{,-bf16,-int8}.xml     OpenVINO IR (--openvino fp32,bf16,int8), weights in the .bin beside each
  <artefact stem>.json      metadata sidecar of each artefact (NAME.json for NAME.onnx)
  export.json               summary of the run: artefacts, parity, timings, failures
Every format goes through the same steps: built into a hidden staging folder inside OUT, given a
provisional metadata record, opened through `runtime.load_embedder` (the code eval, bench and serve use)
and checked against PyTorch, given its final record, and only then moved into place with its companion
files (os.replace, the main file last), so nothing half-written or unchecked looks valid. An artefact that
fails its check (or cannot be opened) is kept as `<file>.failed` for inspection and the run fails.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from graft_edge.artefact.record import ArtefactMeta, BatchRange, sidecar_path, write_sidecar
from graft_edge.checkpoint import Checkpoint, load_model
from graft_edge.errors import GraftError, one_line
from graft_edge.export import parity
from graft_edge.export.builders import BUILDERS, BuildInputs
from graft_edge.export.calibration import PARITY_SAMPLES, check_calib_root, load_calibration, load_parity_images
from graft_edge.export.metadata import model_metadata
from graft_edge.export.options import ExportOptions
from graft_edge.fileio import sha256_file, write_json
from graft_edge.formats import Format
from graft_edge.outdir import FolderBusy, OutputLock, clean_stale_temps
from graft_edge.runtime import RUNTIMES, Unavailable, artefact_files, check_available, load_embedder

SUMMARY_FILE = "export.json"
FP32_MIN_COSINE = 0.9999  # FP32 artefacts of runtimes with their own kernel order (TensorRT) are judged by cosine
Log = Callable[[str], None]


@dataclass
class Artefact:
    """One exported file (and its companions) with its check."""

    kind: str  # formats.Format.kind: onnx-fp32 | onnx-int8-dynamic | ... | trt-int8
    precision: str
    path: Path
    files: list[Path] = field(default_factory=list)
    sidecar: Path | None = None
    size_bytes: int = 0
    parity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    status: str = "ok"  # ok | failed | staged (built, checked, not kept: --no-onnx)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["files"] = [str(f) for f in self.files]
        d["sidecar"] = str(self.sidecar) if self.sidecar else None
        return d


@dataclass
class ExportResult:
    """What export_model produced: artefacts (with parity), failures, notes, timings."""

    out_dir: Path
    source: Path
    artefacts: list[Artefact] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def get(self, kind: str) -> Artefact | None:
        return next((a for a in self.artefacts if a.kind == kind), None)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "source": str(self.source), "ok": self.ok, "seconds": self.seconds,
                "artefacts": [a.to_dict() for a in self.artefacts], "failures": list(self.failures),
                "notes": list(self.notes)}


class ExportFailed(GraftError):
    """An artefact failed its check (or its runtime was unavailable); `.result` holds everything produced."""

    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Candidate:
    """One artefact on its way into OUT: where it is staged and lands, and how its check went."""

    fmt: Format
    staged: Path
    dest: Path
    started: float
    meta: dict[str, Any] = field(default_factory=dict)  # what the builder and the check add to the record
    report: parity.ParityReport | None = None
    failure: str = ""  # why it failed its check ("" = passed)
    keep: bool = True  # False: built and checked as the source of others, not kept (--no-onnx)


# ------------------------------------------------------------------------------------------ files

def _prepare_out(out_dir: str | Path) -> Path:
    """Create OUT and prove it is writable (GraftError otherwise), before any work is done."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GraftError(f"--out {out} is not writable ({exc.strerror or exc})") from None
    return out


def _companion(staged: Path, f: Path, dest: Path) -> Path:
    """Where a staged artefact's file `f` goes next to `dest` (model.onnx.data, model.openvino.bin)."""
    if f.name.startswith(staged.name):
        return dest.parent / (dest.name + f.name[len(staged.name):])
    return dest.with_suffix(f.suffix)


def _commit(staged: Path, dest: Path) -> list[Path]:
    """Move a staged artefact and its companions into place, the main file last; companions of an older artefact
    under the same name that the new one does not have (a stale .onnx.data) are removed."""
    files = artefact_files(staged)
    targets = [_companion(staged, f, dest) for f in files[1:]]
    stale = [f for f in (artefact_files(dest)[1:] if dest.is_file() else []) if f not in targets]
    for f, target in zip(files[1:], targets):
        os.replace(f, target)
    for f in stale:
        f.unlink(missing_ok=True)
    os.replace(staged, dest)
    return [dest] + targets


def _quarantine(staged: Path, dest: Path) -> list[Path]:
    """Keep a failed artefact as `<name>.failed` (and its data as `<name>.data.failed`) for inspection."""
    kept = []
    for f in artefact_files(staged):
        target = _companion(staged, f, dest)
        target = target.with_name(target.name + ".failed")
        os.replace(f, target)
        kept.append(target)
    return kept


def _describe(report: parity.ParityReport) -> str:
    parts = [f"max|diff| {report.max_abs_diff:.2e}"]
    for kind in ("real", "random"):
        worst = report.worst(kind)
        if worst:
            parts.append(f"min cos {worst['min_cosine']:.6f} ({kind})")
    return ", ".join(parts)


def _judge(opt: ExportOptions, fmt: Format, report: parity.ParityReport) -> tuple[str, dict[str, Any]]:
    """(why the artefact fails its check or "", the judgement for its metadata).

    FP32 on a runtime that reproduces PyTorch's arithmetic: the largest absolute difference within --tolerance;
    everything else: the worst cosine with the FP32 embeddings, on real images when there are some (a calibrated
    model is only meant for that input range: random N(0,1) "images" exceed it and are clipped).
    """
    if fmt.precision == "fp32" and RUNTIMES[fmt.runtime].exact_fp32:
        if report.max_abs_diff <= opt.tolerance:
            return "", {}
        return f"max abs diff {report.max_abs_diff:.3e} vs PyTorch exceeds --tolerance {opt.tolerance:g}", {}
    real = report.worst("real")
    judged_on = "real" if real else "random"
    judged = (real or report.worst("random"))["min_cosine"]
    need = FP32_MIN_COSINE if fmt.precision == "fp32" else opt.min_cosine(fmt.precision)
    meta = {"min_cosine_required": need, "judged_on": judged_on,
            "cosine_vs_fp32": {"random": report.worst("random"), "real": real}}
    if judged >= need:
        return "", meta
    return f"min cosine {judged:.5f} vs FP32 on {judged_on} inputs is below {need:g}", meta


# ------------------------------------------------------------------------------------------ the job

@dataclass
class ExportJob:
    """Everything the steps of one export share."""

    model_path: Path
    out: Path
    opt: ExportOptions
    log: Log
    model: Any
    ckpt: Checkpoint
    base: ArtefactMeta  # the FP32 record every artefact's metadata starts from
    calib: dict[str, np.ndarray] | None
    inputs: list[tuple[str, int, parity.Batch]]  # parity inputs
    reference: dict[tuple[str, int, str], np.ndarray]  # PyTorch embeddings of the parity inputs (kind, batch, subset)
    result: ExportResult
    built: dict[str, Path] = field(default_factory=dict)  # format name -> its checked file (in OUT or staged)

    def record(self, fmt: Format, cand_meta: dict[str, Any], report: parity.ParityReport | None) -> dict[str, Any]:
        """The flat metadata of one artefact (a builder that fixes the batch range returns `batch_profile`)."""
        extra = {**self.base.extra, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **cand_meta}
        if report is not None:
            extra["parity"] = report.to_dict()
        profile = cand_meta.get("batch_profile")
        batch = BatchRange(*(int(v) for v in profile)) if profile else None
        return replace(self.base, precision=fmt.precision, batch=batch, extra=extra).to_dict()

    def write_record(self, cand: Candidate, report: parity.ParityReport | None) -> dict[str, Any]:
        """Store the record inside the staged file where its runtime keeps one there (ONNX); the record."""
        meta = self.record(cand.fmt, cand.meta, report)
        family = RUNTIMES[cand.fmt.runtime]
        if family.write_embedded is not None:
            family.write_embedded(cand.staged, meta)
        return meta

    def check(self, cand: Candidate) -> tuple[parity.ParityReport | None, str]:
        """Open the staged artefact the way eval/bench/serve do and compare it with PyTorch on every parity input
        its batch range admits; (report, why it fails or '')."""
        family = RUNTIMES[cand.fmt.runtime]
        try:
            emb = load_embedder(cand.staged, device=family.check_device)
        except GraftError as exc:
            return None, f"its runtime cannot open it: {one_line(exc)}"
        lo, _, hi = emb.info.extra.get("batch_range") or (1, 0, float("inf"))
        inputs = [(k, b, x) for k, b, x in self.inputs if lo <= b <= hi]
        if not inputs:
            return None, ""
        report = parity.measure(self.reference, emb.embed, inputs)
        failure, judgement = _judge(self.opt, cand.fmt, report)
        cand.meta.update(judgement)
        return report, failure

    def finish(self, cand: Candidate) -> Artefact:
        """Quarantine a failed artefact, or write its final record and move it into place."""
        art = Artefact(kind=cand.fmt.kind, precision=cand.fmt.precision, path=cand.dest,
                       parity=cand.report.to_dict() if cand.report else {})
        sidecar_path(cand.staged).unlink(missing_ok=True)  # the provisional record
        if cand.failure:
            art.status, art.message = "failed", cand.failure
            art.files = _quarantine(cand.staged, cand.dest)
            self.result.failures.append(f"{cand.dest.name}: {cand.failure}")
            self.log(f"FAILED {cand.dest.name}: {cand.failure} (kept as {art.files[0].name})")
        elif cand.keep:
            meta = self.write_record(cand, cand.report)
            art.files = _commit(cand.staged, cand.dest)
            art.sidecar = write_sidecar(cand.dest, meta, art.files)
        else:  # built and checked as the source of the others, deleted with the staging folder
            self.write_record(cand, cand.report)
            art.status = "staged"
        art.size_bytes = sum(f.stat().st_size for f in (art.files or artefact_files(cand.staged)))
        art.seconds = time.perf_counter() - cand.started
        self.result.artefacts.append(art)
        if not cand.failure:
            where = cand.dest.name if cand.keep else f"{cand.dest.name} (checked, not kept)"
            self.log(f"ok {where}: {art.size_bytes / 1e6:.1f} MB, "
                     + (_describe(cand.report) if cand.report else "no parity check") + f" ({art.seconds:.1f} s)")
        return art


def _load(model_path: Path, opt: ExportOptions) -> tuple[Any, Checkpoint, ArtefactMeta]:
    """The model, its checkpoint and base record; --calib-data checked. Nothing is written yet."""
    model, ckpt = load_model(model_path)
    model.eval()
    if opt.calib_data:
        check_calib_root(opt.calib_data, tuple(model.modalities), calibrate=opt.needs_calibration())
    return model, ckpt, model_metadata(model, ckpt, model_path, sha256_file(model_path), opt.opset)


def _images(model: Any, opt: ExportOptions, result: ExportResult, log: Log):
    """(calibration images or None, parity inputs, PyTorch reference embeddings of them)."""
    cfg, mods = model.cfg, tuple(model.modalities)
    calib = real = None
    if opt.calib_data:
        t = time.perf_counter()
        real = load_parity_images(opt.calib_data, mods, cfg.img_size, cfg.mean, cfg.std, PARITY_SAMPLES)
        if opt.needs_calibration():
            calib = load_calibration(opt.calib_data, mods, cfg.img_size, cfg.mean, cfg.std, opt.calib_samples)
            n = len(next(iter(calib.values())))
            if n < opt.calib_samples:
                result.notes.append(f"calibrated on all {n} train images (fewer than --calib-samples "
                                    f"{opt.calib_samples})")
        log(f"read {len(next(iter(real.values())))} real images for parity"
            + (f" and {len(next(iter(calib.values())))} for calibration" if calib else "")
            + f" from {opt.calib_data} ({time.perf_counter() - t:.1f} s)")
    inputs = parity.parity_inputs(mods, tuple(cfg.img_size), real, missing=model.supports_presence_mask)
    t = time.perf_counter()
    reference = parity.reference_embeddings(parity.torch_reference(model), inputs)
    log(f"PyTorch reference embeddings computed ({time.perf_counter() - t:.1f} s)")
    return calib, inputs, reference


# ------------------------------------------------------------------------------------------ the steps

def _unavailable(job: ExportJob, why: str) -> None:
    """Record a format whose runtime, package or hardware is missing here (the others are still built)."""
    job.result.failures.append(why)
    job.log(f"FAILED {why}")


def _build(job: ExportJob, fmt: Format, stage: Path) -> Path | None:
    """One format, the same steps for every runtime: build into the staging folder -> provisional record ->
    parity through load_embedder -> final record -> commit (or quarantine). Its checked file, None on failure."""
    name = f"{job.opt.name}{fmt.suffix}"
    cand = Candidate(fmt, stage / name, job.out / name, time.perf_counter(), keep=job.opt.keeps(fmt))
    try:
        check_available(fmt)
        job.log(f"building {fmt.name} ({fmt.help}) ...")
        inputs = BuildInputs(job.model, job.opt, job.calib, dict(job.built), job.out, tuple(job.ckpt.history or ()),
                             job.log)
        cand.meta = BUILDERS[fmt.name](inputs, job.built.get(fmt.source) if fmt.source else None, cand.staged)
    except Unavailable as exc:
        _unavailable(job, str(exc))
        return None
    write_sidecar(cand.staged, job.write_record(cand, None), [])  # provisional: what the check opens it with
    cand.report, cand.failure = job.check(cand)
    art = job.finish(cand)
    return {"ok": art.path, "staged": cand.staged}.get(art.status)


def export_model(model_path: str | Path, out_dir: str | Path, options: ExportOptions | None = None,
                 log: Log | None = None, raise_on_failure: bool = True) -> ExportResult:
    """Export a checkpoint to OUT: the FP32 ONNX (always built and checked) and every format the options ask for.

    Bad input raises GraftError before anything is written. A failed check (or TensorRT missing
    with options.trt) raises ExportFailed carrying the result, unless raise_on_failure=False:
    then check `result.ok` / `result.failures`. OUT is locked for the run (one export per folder);
    staging folders of killed exports are removed; an OS error (a full disk) is one line naming OUT.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out} exists and is not a folder")
    lock = OutputLock(out, "export")
    try:
        lock.acquire()
    except FolderBusy:
        raise
    except GraftError as exc:
        raise GraftError(f"--out {out} is not writable ({exc})") from None
    try:
        clean_stale_temps(out, (".graft-export-*", ".write-test-*"))
        return _export(model_path, out, options, log, raise_on_failure)
    except OSError as exc:
        what = f" ({exc.filename})" if exc.filename else ""
        raise GraftError(f"cannot write the export to {out}: {exc.strerror or exc}{what}") from None
    finally:
        lock.release()


def _export(model_path: str | Path, out_dir: str | Path, options: ExportOptions | None,
            log: Log | None, raise_on_failure: bool) -> ExportResult:
    """export_model's work, inside the folder's lock."""
    started = time.perf_counter()
    opt = (options or ExportOptions()).validated()
    log = log or (lambda msg: None)
    model_path = Path(model_path)
    model, ckpt, base = _load(model_path, opt)  # bad checkpoint / mismatched --calib-data: fails before OUT exists
    out = _prepare_out(out_dir)
    result = ExportResult(out_dir=out, source=model_path)
    calib, inputs, reference = _images(model, opt, result, log)
    job = ExportJob(model_path, out, opt, log, model, ckpt, base, calib, inputs, reference, result)
    with tempfile.TemporaryDirectory(prefix=".graft-export-", dir=out) as tmp:
        for fmt in opt.plan():  # table order: every source before what is built from it
            if fmt.source is not None and fmt.source not in job.built:
                continue  # its source failed its check or could not be built (already reported)
            path = _build(job, fmt, Path(tmp))
            if path is not None:
                job.built[fmt.name] = path
    result.seconds = time.perf_counter() - started
    options_record = {k: (str(v) if isinstance(v, (Path, BatchRange)) else v) for k, v in asdict(opt).items()}
    options_record["formats"] = [f.name for f in opt.rows()]
    write_json(out / SUMMARY_FILE, {**result.to_dict(), "options": options_record})
    if result.failures and raise_on_failure:
        kept = [a.path.name for a in result.artefacts if a.status == "ok"]
        written = f"; the other artefacts were still written to {out} ({', '.join(kept)})" if kept else ""
        raise ExportFailed("; ".join(result.failures) + written, result)
    return result
