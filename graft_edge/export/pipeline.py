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
Every artefact is staged in a hidden folder inside OUT, checked against PyTorch, given its
metadata, and only then moved into place (os.replace), so nothing half-written looks valid.
An artefact that fails its check is kept as `<file>.failed` for inspection and the run fails.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from graft_edge.artefact import ArtefactMeta, BatchRange, artefact_files, data_file, write_onnx_metadata, write_sidecar
from graft_edge.checkpoint import Checkpoint, load_model
from graft_edge.compress.targets import previous_methods
from graft_edge.errors import GraftError, one_line
from graft_edge.export import parity
from graft_edge.export.builders import BUILDERS, BuildInputs
from graft_edge.export.calibration import PARITY_SAMPLES, check_calib_root, load_calibration, load_parity_images
from graft_edge.export.metadata import model_metadata
from graft_edge.export.options import ExportOptions
from graft_edge.export.tensorrt import TIMING_CACHE, build_engine, require_tensorrt, trt_major, trt_plan
from graft_edge.fileio import sha256_file, write_json
from graft_edge.formats import FORMATS, Format
from graft_edge.outdir import FolderBusy, OutputLock, clean_stale_temps
from graft_edge.runtime.onnx_backend import session_options
from graft_edge.runtime.openvino_backend import compile_ir, run_compiled
from graft_edge.runtime.presence import presence_feeds
from graft_edge.runtime.tensorrt_backend import TensorRTEmbedder, TensorRTUnavailable

SUMMARY_FILE = "export.json"
TRT_SOURCES = ("int8", "int8-static", "fp16")  # the ONNX formats TensorRT engines are built from (by precision)
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
    """An artefact failed its check (or TensorRT was unavailable); `.result` holds everything produced."""

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
    """Move a staged artefact (and its .data or .bin) into place; remove a stale .data of an older export."""
    moved = []
    if staged.suffix == ".xml":
        os.replace(staged.with_suffix(".bin"), dest.with_suffix(".bin"))
        moved.append(dest.with_suffix(".bin"))
    if staged.suffix == ".onnx":
        if data_file(staged).exists():
            os.replace(data_file(staged), data_file(dest))
            moved.append(data_file(dest))
        elif data_file(dest).exists():
            data_file(dest).unlink()
    os.replace(staged, dest)
    return [dest] + moved


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
    """(why the artefact fails its check or "", the judgement for its metadata)."""
    if fmt.precision == "fp32":
        if report.max_abs_diff <= opt.tolerance:
            return "", {}
        return f"max abs diff {report.max_abs_diff:.3e} vs PyTorch exceeds --tolerance {opt.tolerance:g}", {}
    # judged on real images when there are some: a calibrated model is only meant for that input range
    # (random N(0,1) "images" exceed the calibrated range of the first layer and are clipped)
    real = report.worst("real")
    judged_on = "real" if real else "random"
    judged = (real or report.worst("random"))["min_cosine"]
    need = opt.min_cosine(fmt.precision)
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

    def record(self, fmt: Format, cand_meta: dict[str, Any], report: parity.ParityReport | None) -> dict[str, Any]:
        """The flat metadata of one artefact."""
        extra = {**self.base.extra, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **cand_meta}
        if report is not None:
            extra["parity"] = report.to_dict()
        batch = self.opt.batch if fmt.runtime == "tensorrt" else None
        return replace(self.base, precision=fmt.precision, batch=batch, extra=extra).to_dict()

    def check_onnx(self, path: Path) -> parity.ParityReport:
        """Parity of an ONNX file (run by ONNX Runtime on CPU) with the PyTorch reference."""
        try:
            session = ort.InferenceSession(str(path), sess_options=session_options(),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise GraftError(f"ONNX Runtime cannot load the exported {path.name}: {one_line(exc)}") from None

        mods, size = self.base.modalities, self.base.img_size

        def run(batch: parity.Batch) -> np.ndarray:
            return session.run(None, presence_feeds(batch, mods, size, self.base.presence_input, path.name))[0]

        return parity.measure(self.reference, run, self.inputs)

    def check_ir(self, path: Path, precision: str) -> parity.ParityReport:
        """Parity of an OpenVINO IR (compiled with its precision's hint) with the PyTorch reference."""
        compiled = compile_ir(path, precision)
        mods, size = self.base.modalities, self.base.img_size

        def run(batch: parity.Batch) -> np.ndarray:
            return run_compiled(compiled, presence_feeds(batch, mods, size, self.base.presence_input, path.name))

        return parity.measure(self.reference, run, self.inputs)

    def finish(self, cand: Candidate) -> Artefact:
        """Quarantine a failed artefact, or write its metadata and move it into place."""
        art = Artefact(kind=cand.fmt.kind, precision=cand.fmt.precision, path=cand.dest,
                       parity=cand.report.to_dict() if cand.report else {})
        if cand.failure:
            art.status, art.message = "failed", cand.failure
            art.files = _quarantine(cand.staged, cand.dest)
            self.result.failures.append(f"{cand.dest.name}: {cand.failure}")
            self.log(f"FAILED {cand.dest.name}: {cand.failure} (kept as {art.files[0].name})")
        else:
            meta = self.record(cand.fmt, cand.meta, cand.report)
            if cand.staged.suffix == ".onnx":
                write_onnx_metadata(cand.staged, meta)
            if cand.keep:
                art.files = _commit(cand.staged, cand.dest)
                art.sidecar = write_sidecar(cand.dest, meta, art.files)
            else:  # built and checked as the source of the others, deleted with the staging folder
                art.status = "staged"
        art.size_bytes = sum(f.stat().st_size for f in (art.files or artefact_files(cand.staged)))
        art.seconds = time.perf_counter() - cand.started
        self.result.artefacts.append(art)
        if not cand.failure:
            where = cand.dest.name if cand.keep else f"{cand.dest.name} (checked, not kept: --no-onnx)"
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

def _build_onnx(job: ExportJob, fmt: Format, src: Path | None, stage: Path, keep: bool = True) -> Path | None:
    """Build one ONNX or OpenVINO format from `src`, check it, commit it; its path (staged when not kept), None on
    failure."""
    name = f"{job.opt.name}{fmt.suffix}"
    cand = Candidate(fmt, stage / name, job.out / name, time.perf_counter(), keep=keep)
    job.log(f"building {fmt.name} ({fmt.help}) ...")
    cand.meta = BUILDERS[fmt.name](BuildInputs(job.model, job.opt, job.calib), src, cand.staged)
    cand.report = job.check_ir(cand.staged, fmt.precision) if fmt.runtime == "openvino" else \
        job.check_onnx(cand.staged)
    cand.failure, judgement = _judge(job.opt, fmt, cand.report)
    cand.meta.update(judgement)
    art = job.finish(cand)
    return {"ok": art.path, "staged": cand.staged}.get(art.status)


def _check_engine(job: ExportJob, path: Path, fmt: Format) -> tuple[parity.ParityReport | None, str]:
    """Run the engine on the parity inputs its profile admits; (report, failure reason or '')."""
    emb = TensorRTEmbedder(path)
    inputs = [(k, b, x) for k, b, x in job.inputs if emb.batch_range.contains(b)]
    if not inputs:
        return None, ""
    report = parity.measure(job.reference, emb.embed, inputs)
    need = 0.9999 if fmt.precision == "fp32" else job.opt.min_cosine(fmt.precision)
    if report.min_cosine < need:
        return report, f"min cosine {report.min_cosine:.5f} vs PyTorch FP32 is below {need:g}"
    return report, ""


def _build_engine(job: ExportJob, fmt: Format, major: int, sparse: bool, sources: dict[str, Path | None]) -> None:
    """One TensorRT engine from the ONNX variant this TensorRT needs; checked, or quarantined."""
    plan = trt_plan(major, fmt.precision, sparse)
    src = sources.get(plan.onnx_variant)
    if src is None:
        job.result.failures.append(f"{fmt.kind}: its source ONNX ({plan.onnx_variant}) was not produced")
        return
    started = time.perf_counter()
    dest = job.out / f"{job.opt.name}{fmt.suffix}"
    facts = build_engine(src, dest, precision=fmt.precision, batch=job.opt.batch, workspace_mb=job.opt.workspace_mb,
                         timing_cache=job.out / TIMING_CACHE, sparse=sparse, log=job.log)
    art = Artefact(kind=fmt.kind, precision=fmt.precision, path=dest, files=[dest])
    art.sidecar = write_sidecar(dest, job.record(fmt, facts, None), [dest])
    report, why = _check_engine(job, dest, fmt)
    if report is not None:
        art.parity = report.to_dict()
        write_sidecar(dest, job.record(fmt, facts, report), [dest])
    if why:
        art.status, art.message = "failed", why
        art.files = _quarantine(dest, dest)
        art.sidecar.unlink(missing_ok=True)
        job.result.failures.append(f"{dest.name}: {why}")
    art.size_bytes = sum(f.stat().st_size for f in art.files)
    art.seconds = time.perf_counter() - started
    job.result.artefacts.append(art)
    job.log(("ok " if not why else "FAILED ") + f"{dest.name}: {art.size_bytes / 1e6:.1f} MB"
            + (f", {_describe(report)}" if report else "") + (f" - {why}" if why else "") + f" ({art.seconds:.1f} s)")


def _build_engines(job: ExportJob, rows: list[Format], sources: dict[str, Path | None]) -> None:
    """Every requested TensorRT engine; TensorRTUnavailable when TensorRT or a GPU is missing."""
    trt = require_tensorrt()
    major = trt_major(trt.__version__)
    sparse = job.opt.sparse_weights if job.opt.sparse_weights is not None else \
        "2:4" in previous_methods(job.ckpt.history)
    if "dynamic" in job.opt.int8 and "static" not in job.opt.int8:
        job.result.notes.append("TensorRT INT8 needs the static Q/DQ model (--int8 static): no INT8 engine built")
    for fmt in rows:
        _build_engine(job, fmt, major, sparse, sources)


def _build_fused(job: ExportJob, wanted: tuple[Format, ...], stage: Path) -> dict[str, Path | None]:
    """The fused-attention FP32 ONNX when it or a format built from it is asked for ({} otherwise)."""
    names = {f.name for f in wanted}
    if not any(FORMATS[n].source == "onnx-fused" or n == "onnx-fused" for n in names):
        return {}
    return {"onnx-fused": _build_onnx(job, FORMATS["onnx-fused"], None, stage, keep="onnx-fused" in names)}


def _stale_temps(options: ExportOptions) -> tuple[str, ...]:
    """Leftovers of a killed export in OUT: staging folders, the write probe, and the temp files of atomic writes
    (sidecars, export.json, the TensorRT timing cache) that the kill stopped before their rename."""
    return (".graft-export-*", ".write-test-*", f".{options.name}.*.tmp", f".{SUMMARY_FILE}.*.tmp",
            f".{TIMING_CACHE}.*.tmp")


def export_model(model_path: str | Path, out_dir: str | Path, options: ExportOptions | None = None,
                 log: Log | None = None, raise_on_failure: bool = True) -> ExportResult:
    """Export a checkpoint to OUT: the FP32 ONNX (always built and checked) and every format the options ask for.

    Bad input raises GraftError before anything is written. A failed check (or TensorRT missing
    with options.trt) raises ExportFailed carrying the result, unless raise_on_failure=False:
    then check `result.ok` / `result.failures`. OUT is locked for the run (one export per folder);
    staging folders and temp files of killed exports are removed; an OS error (a full disk) is one line naming OUT.
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
        clean_stale_temps(out, _stale_temps(options or ExportOptions()))
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
    wanted = opt.formats()
    trt_error: str | None = None
    with tempfile.TemporaryDirectory(prefix=".graft-export-", dir=out) as tmp:
        stage = Path(tmp)
        fp32 = _build_onnx(job, FORMATS["onnx"], None, stage, keep=opt.onnx)
        sources: dict[str, Path | None] = {"fp32": fp32}
        if fp32 is not None:
            built = {"onnx": fp32, **_build_fused(job, wanted, stage)}
            for fmt in (f for f in wanted if f.runtime in ("onnx", "openvino") and f.source is not None):
                src = built.get(fmt.source)
                if src is None:  # its source failed its check (already reported)
                    continue
                built[fmt.name] = _build_onnx(job, fmt, src, stage)
                if fmt.name in TRT_SOURCES:
                    sources[fmt.precision] = built[fmt.name]
            engines = [f for f in wanted if f.runtime == "tensorrt"]
            if engines:
                try:
                    _build_engines(job, engines, sources)
                except TensorRTUnavailable as exc:
                    kept = [a.path.name for a in result.artefacts if a.status == "ok"]
                    trt_error = f"--trt: {exc}; " + (f"the ONNX artefacts were still written to {out} "
                                                     f"({', '.join(kept)})" if kept else
                                                     "no ONNX artefact was kept (--no-onnx)")
                    result.failures.append(trt_error)
    result.seconds = time.perf_counter() - started
    write_json(out / SUMMARY_FILE, {**result.to_dict(), "options": {
        k: (str(v) if isinstance(v, (Path, BatchRange)) else v) for k, v in asdict(opt).items()}})
    if result.failures and raise_on_failure:
        raise ExportFailed(trt_error or "; ".join(result.failures), result)
    return result
