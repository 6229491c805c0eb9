"""`export_model`: checkpoint -> checked, self-describing deployment artefacts in one folder.

Files written to OUT (NAME defaults to "model"):
  NAME.onnx                 FP32 ONNX (+ NAME.onnx.data when the weights exceed ~1.8 GB)
  NAME.int8-dynamic.onnx    INT8 dynamic quantisation (ONNX Runtime)
  NAME.int8-static.onnx     INT8 static Q/DQ, calibrated on --calib-data (ONNX Runtime, TensorRT)
  NAME.fp16.onnx            FP16 with LayerNorm/Softmax/reductions FP32, FP32 I/O (TensorRT >= 11, GPUs)
  NAME.trt-{fp32,fp16,int8}.engine   TensorRT engines (--trt), + timing.cache
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
from typing import Any, Callable, Mapping

import numpy as np

from graft_edge.errors import GraftError
from graft_edge.export import parity as P
from graft_edge.export.calibration import DEFAULT_CALIB_SAMPLES, MIN_CALIB_SAMPLES, PARITY_SAMPLES
from graft_edge.export.onnx import DEFAULT_OPSET, check_opset
from graft_edge.export.quantize import CALIB_METHODS, DEFAULT_CALIB_METHOD
from graft_edge.export.tensorrt import (DEFAULT_BATCH, DEFAULT_WORKSPACE_MB, TIMING_CACHE, BatchRange,
                                        TensorRTUnavailable, parse_batch_range)
from graft_edge.outdir import FolderBusy, OutputLock, clean_stale_temps

INT8_MODES = ("dynamic", "static")
DEFAULT_TOLERANCE = 1e-4
DEFAULT_MIN_COSINE_FP16 = 0.999
DEFAULT_MIN_COSINE_INT8 = 0.98
SUMMARY_FILE = "export.json"
Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how strictly to check it (the CLI's options, as data)."""

    onnx: bool = True  # keep the FP32 ONNX in OUT (it is always built: everything else derives from it)
    int8: tuple[str, ...] = ()  # subset of ("dynamic", "static")
    fp16: bool = False
    trt: bool = False
    batch: str | BatchRange = DEFAULT_BATCH  # TensorRT optimisation profile MIN:OPT:MAX
    calib_data: str | Path | None = None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_method: str = DEFAULT_CALIB_METHOD
    opset: int = DEFAULT_OPSET
    tolerance: float = DEFAULT_TOLERANCE  # FP32 max abs diff allowed vs PyTorch
    min_cosine_fp16: float = DEFAULT_MIN_COSINE_FP16
    min_cosine_int8: float = DEFAULT_MIN_COSINE_INT8
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    sparse_weights: bool | None = None  # None: on when the pruning history says 2:4
    external_data: bool | None = None  # None: only when the weights exceed ~1.8 GB
    name: str = "model"

    def validated(self) -> "ExportOptions":
        """Options checked and normalised; GraftError (one line) on the first bad one."""
        check_opset(self.opset)
        int8 = tuple(dict.fromkeys(str(m).strip().lower() for m in self.int8 if str(m).strip()))
        bad = [m for m in int8 if m not in INT8_MODES]
        if bad:
            raise GraftError(f"--int8 {bad[0]!r}: expected dynamic or static")
        if "static" in int8 and not self.calib_data:
            raise GraftError("--int8 static needs --calib-data ROOT (a dataset whose train split calibrates the activation ranges)")
        if self.calib_method not in CALIB_METHODS:
            raise GraftError(f"--calib-method {self.calib_method!r}: expected one of {', '.join(CALIB_METHODS)}")
        if self.calib_samples < MIN_CALIB_SAMPLES:
            raise GraftError(f"--calib-samples {self.calib_samples}: at least {MIN_CALIB_SAMPLES} images are needed for reliable INT8 ranges")
        if not (self.tolerance > 0 and np.isfinite(self.tolerance)):
            raise GraftError(f"--tolerance {self.tolerance}: expected a positive number (max abs diff of FP32 embeddings)")
        for flag, value in (("--min-cosine-fp16", self.min_cosine_fp16), ("--min-cosine-int8", self.min_cosine_int8)):
            if not -1.0 <= value <= 1.0:
                raise GraftError(f"{flag} {value}: a cosine lies in [-1, 1]")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise GraftError(f"--name {self.name!r}: expected a plain file stem such as 'model'")
        if not (self.onnx or int8 or self.fp16 or self.trt):
            raise GraftError("nothing to export: --no-onnx without --int8, --fp16 or --trt")
        return replace(self, int8=int8, batch=parse_batch_range(self.batch))


@dataclass
class Artefact:
    """One exported file (and its companions) with its check."""

    kind: str  # onnx-fp32 | onnx-int8-dynamic | onnx-int8-static | onnx-fp16 | trt-fp32 | trt-fp16 | trt-int8
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
                "artefacts": [a.to_dict() for a in self.artefacts], "failures": list(self.failures), "notes": list(self.notes)}


class ExportFailed(GraftError):
    """An artefact failed its check (or TensorRT was unavailable); `.result` holds everything produced."""

    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------ helpers

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


def _files_of(path: Path) -> list[Path]:
    from graft_edge.export.onnx import onnx_files

    return onnx_files(path) if path.suffix == ".onnx" else [path]


def _commit(staged: Path, dest: Path) -> list[Path]:
    """Move a staged artefact (and its .data) into place; remove a stale .data of an older export."""
    from graft_edge.export.onnx import data_file

    moved = []
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
    for f in _files_of(staged):
        target = dest.parent / (dest.name + f.name[len(staged.name):] + ".failed")
        os.replace(f, target)
        kept.append(target)
    return kept


def _file_facts(files: list[Path]) -> list[dict[str, Any]]:
    from graft_edge.fileio import sha256_file

    return [{"name": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files]


def _write_json(path: Path, data: Any) -> Path:
    """Atomic JSON write, readable like any file this process creates (atomic temp files start 0600)."""
    from graft_edge.fileio import write_json

    write_json(path, data)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return path


def _fmt(report: P.ParityReport) -> str:
    parts = [f"max|diff| {report.max_abs_diff:.2e}"]
    for kind in ("real", "random"):
        worst = report.worst(kind)
        if worst:
            parts.append(f"min cos {worst['min_cosine']:.6f} ({kind})")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ the run

class _Run:
    """State shared by the steps of one export."""

    def __init__(self, model_path: Path, out: Path, options: ExportOptions, log: Log) -> None:
        self.model_path, self.out, self.opt, self.log = model_path, out, options, log
        self.result = ExportResult(out_dir=out, source=model_path)

    # --- setup
    def load(self) -> None:
        from graft_edge.checkpoint import load_model
        from graft_edge.export.calibration import check_calib_root
        from graft_edge.export.metadata import model_metadata, tool_versions
        from graft_edge.fileio import sha256_file

        self.model, self.ckpt = load_model(self.model_path)
        self.model.eval()
        self.modalities = tuple(self.model.modalities)
        self.img_size = tuple(self.model.cfg.img_size)
        if self.opt.calib_data:
            check_calib_root(self.opt.calib_data, self.modalities)
            if "static" in self.opt.int8:
                from graft_edge.data.layouts import read_split

                available = len(read_split(self.opt.calib_data, "train", self.modalities))
                if available < MIN_CALIB_SAMPLES:
                    raise GraftError(f"--calib-data {self.opt.calib_data}: its train split has {available} image(s); "
                                     f"static INT8 calibration needs at least {MIN_CALIB_SAMPLES}")
        self.base_meta = model_metadata(self.model, self.ckpt, self.model_path, sha256_file(self.model_path))
        self.base_meta["tool_versions"] = tool_versions()
        self.base_meta["opset"] = self.opt.opset

    def load_images(self) -> None:
        from graft_edge.export.calibration import load_calibration, load_parity_images

        cfg = self.model.cfg
        self.calib = None
        self.real = None
        if self.opt.calib_data:
            t = time.perf_counter()
            self.real = load_parity_images(self.opt.calib_data, self.modalities, cfg.img_size, cfg.mean, cfg.std, PARITY_SAMPLES)
            if "static" in self.opt.int8:
                self.calib = load_calibration(self.opt.calib_data, self.modalities, cfg.img_size, cfg.mean, cfg.std,
                                              self.opt.calib_samples)
                n = len(next(iter(self.calib.values())))
                if n < self.opt.calib_samples:
                    self.result.notes.append(f"calibrated on all {n} train images (fewer than --calib-samples {self.opt.calib_samples})")
            self.log(f"read {len(next(iter(self.real.values())))} real images for parity"
                     + (f" and {len(next(iter(self.calib.values())))} for calibration" if self.calib else "")
                     + f" from {self.opt.calib_data} ({time.perf_counter() - t:.1f} s)")
        self.inputs = P.parity_inputs(self.modalities, self.img_size, self.real)
        t = time.perf_counter()
        self.reference = P.reference_embeddings(P.torch_reference(self.model), self.inputs)
        self.log(f"PyTorch reference embeddings computed ({time.perf_counter() - t:.1f} s)")

    # --- generic artefact handling
    def metadata(self, precision: str, report: P.ParityReport | None, **more: Any) -> dict[str, Any]:
        meta = dict(self.base_meta)
        meta["precision"] = precision
        meta["exported_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if report is not None:
            meta["parity"] = report.to_dict()
        meta.update(more)
        return meta

    def check_onnx(self, path: Path) -> P.ParityReport:
        """Parity of an ONNX file (run by ONNX Runtime on CPU) with the PyTorch reference."""
        import onnxruntime as ort

        from graft_edge.runtime.onnx_backend import session_options

        try:
            session = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise GraftError(f"ONNX Runtime cannot load the exported {path.name}: {first}") from None

        def run(batch: P.Batch) -> np.ndarray:
            return session.run(None, {m: np.ascontiguousarray(x) for m, x in batch.items()})[0]

        return P.measure(self.reference, run, self.inputs)

    def finish(self, kind: str, precision: str, staged: Path, dest: Path, report: P.ParityReport | None,
               passed: bool, why: str, started: float, meta_more: Mapping[str, Any], keep: bool = True) -> Artefact:
        """Quarantine a failed artefact, or write its metadata and move it into place."""
        from graft_edge.export.metadata import sidecar_path, write_onnx_metadata

        art = Artefact(kind=kind, precision=precision, path=dest, parity=report.to_dict() if report else {})
        if not passed:
            art.status, art.message = "failed", why
            art.files = _quarantine(staged, dest)
            art.size_bytes = sum(f.stat().st_size for f in art.files)
            art.seconds = time.perf_counter() - started
            self.result.failures.append(f"{dest.name}: {why}")
            self.result.artefacts.append(art)
            self.log(f"FAILED {dest.name}: {why} (kept as {art.files[0].name})")
            return art
        meta = self.metadata(precision, report, **dict(meta_more))
        if staged.suffix == ".onnx":
            write_onnx_metadata(staged, meta)
        if keep:
            art.files = _commit(staged, dest)
            art.sidecar = sidecar_path(dest)
            _write_json(art.sidecar, {**meta, "artefact": {"file": dest.name, "files": _file_facts(art.files)}})
        else:  # built and checked as the source of the others, deleted with the staging folder
            art.status = "staged"
            art.size_bytes = sum(f.stat().st_size for f in _files_of(staged))
        art.size_bytes = sum(f.stat().st_size for f in art.files) if art.files else art.size_bytes
        art.seconds = time.perf_counter() - started
        self.result.artefacts.append(art)
        where = dest.name if keep else f"{dest.name} (checked, not kept: --no-onnx)"
        self.log(f"ok {where}: {art.size_bytes / 1e6:.1f} MB, "
                 + (_fmt(report) if report else "no parity check") + f" ({art.seconds:.1f} s)")
        return art

    # --- steps
    def fp32(self, stage: Path) -> Path | None:
        from graft_edge.export.onnx import check_exported, export_onnx

        started = time.perf_counter()
        dest = self.out / f"{self.opt.name}.onnx"
        staged = stage / dest.name
        self.log(f"exporting FP32 ONNX (opset {self.opt.opset}) ...")
        export_onnx(self.model, staged, opset=self.opt.opset, external_data=self.opt.external_data)
        check_exported(staged, self.modalities, self.opt.opset)
        report = self.check_onnx(staged)
        passed = report.max_abs_diff <= self.opt.tolerance
        why = f"max abs diff {report.max_abs_diff:.3e} vs PyTorch exceeds --tolerance {self.opt.tolerance:g}"
        art = self.finish("onnx-fp32", "fp32", staged, dest, report, passed, why, started,
                          {"tolerance": self.opt.tolerance}, keep=self.opt.onnx)
        return {"ok": art.path, "staged": staged}.get(art.status)

    def reduced(self, kind: str, precision: str, src: Path, stage: Path, build: Callable[[Path], Any],
                threshold: float, meta_more: dict[str, Any]) -> Path | None:
        started = time.perf_counter()
        dest = self.out / f"{self.opt.name}.{precision}.onnx"
        staged = stage / dest.name
        self.log(f"building {precision} ONNX ...")
        build(staged)
        report = self.check_onnx(staged)
        real = report.worst("real")
        # judged on real images when there are some: a calibrated model is only meant for that input range
        # (random N(0,1) "images" exceed the calibrated range of the first layer and are clipped)
        judged_on = "real" if real else "random"
        judged = (real or report.worst("random"))["min_cosine"]
        meta_more = {**meta_more, "min_cosine_required": threshold, "judged_on": judged_on,
                     "cosine_vs_fp32": {"random": report.worst("random"), "real": real}}
        passed = judged >= threshold
        why = f"min cosine {judged:.5f} vs FP32 on {judged_on} inputs is below {threshold:g}"
        art = self.finish(kind, precision, staged, dest, report, passed, why, started, meta_more)
        return art.path if art.status == "ok" else None

    def trt(self, sources: Mapping[str, Path | None]) -> None:
        from graft_edge.export.metadata import sidecar_path
        from graft_edge.export.tensorrt import build_engine, is_two_four, require_tensorrt, trt_major, trt_plan

        trt = require_tensorrt()  # TensorRTUnavailable: the caller reports it after the ONNX results
        major = trt_major(trt.__version__)
        sparse = self.opt.sparse_weights if self.opt.sparse_weights is not None else is_two_four(self.ckpt.history)
        wanted = ["fp32"] + (["fp16"] if self.opt.fp16 else []) + (["int8"] if "static" in self.opt.int8 else [])
        if "dynamic" in self.opt.int8 and "static" not in self.opt.int8:
            self.result.notes.append("TensorRT INT8 needs the static Q/DQ model (--int8 static): no INT8 engine built")
        for precision in wanted:
            plan = trt_plan(major, precision, sparse)
            src = sources.get(plan.onnx_variant)
            if src is None:
                self.result.failures.append(f"trt-{precision}: its source ONNX ({plan.onnx_variant}) was not produced")
                continue
            started = time.perf_counter()
            dest = self.out / f"{self.opt.name}.trt-{precision}.engine"
            facts = build_engine(src, dest, precision=precision, batch=self.opt.batch, workspace_mb=self.opt.workspace_mb,
                                 timing_cache=self.out / TIMING_CACHE, sparse=sparse, log=self.log)
            art = Artefact(kind=f"trt-{precision}", precision=precision, path=dest, files=[dest])
            meta = self.metadata(precision, None, **facts)
            art.sidecar = sidecar_path(dest)
            _write_json(art.sidecar, {**meta, "artefact": {"file": dest.name, "files": _file_facts([dest])}})
            report, why = self.check_engine(dest, precision)
            art.parity = report.to_dict() if report else {}
            if report is not None:
                meta["parity"] = art.parity
                _write_json(art.sidecar, {**meta, "artefact": {"file": dest.name, "files": _file_facts([dest])}})
            if why:
                art.status, art.message = "failed", why
                art.files = _quarantine(dest, dest)
                art.sidecar.unlink(missing_ok=True)
                self.result.failures.append(f"{dest.name}: {why}")
            art.size_bytes = sum(f.stat().st_size for f in art.files)
            art.seconds = time.perf_counter() - started
            self.result.artefacts.append(art)
            self.log(("ok " if not why else "FAILED ") + f"{dest.name}: {art.size_bytes / 1e6:.1f} MB"
                     + (f", {_fmt(report)}" if report else "") + (f" - {why}" if why else "") + f" ({art.seconds:.1f} s)")

    def check_engine(self, path: Path, precision: str) -> tuple[P.ParityReport | None, str]:
        """Run the engine on the parity inputs its profile admits; (report, failure reason or '')."""
        from graft_edge.runtime.tensorrt_backend import TensorRTEmbedder

        emb = TensorRTEmbedder(path)
        inputs = [(k, b, x) for k, b, x in self.inputs if emb.batch_range.contains(b)]
        if not inputs:
            return None, ""
        report = P.measure(self.reference, emb.embed, inputs)
        need = {"fp32": 0.9999, "fp16": self.opt.min_cosine_fp16, "int8": self.opt.min_cosine_int8}[precision]
        if report.min_cosine < need:
            return report, f"min cosine {report.min_cosine:.5f} vs PyTorch FP32 is below {need:g}"
        return report, ""


def export_model(model_path: str | Path, out_dir: str | Path, options: ExportOptions | None = None,
                 log: Log | None = None, raise_on_failure: bool = True) -> ExportResult:
    """Export a checkpoint to OUT: FP32 ONNX (always built and checked), INT8 / FP16 ONNX, TensorRT engines.

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
    run = _Run(model_path, Path(out_dir), opt, log)
    run.load()  # bad checkpoint / mismatched --calib-data: fails before OUT is touched
    run.out = _prepare_out(out_dir)
    run.result.out_dir = run.out
    run.load_images()
    trt_error: str | None = None
    from graft_edge.export import fp16 as F
    from graft_edge.export import quantize as Q

    with tempfile.TemporaryDirectory(prefix=".graft-export-", dir=run.out) as tmp:
        stage = Path(tmp)
        src = run.fp32(stage)
        sources: dict[str, Path | None] = {"fp32": src}
        if src is not None:
            if "dynamic" in opt.int8:
                sources["int8-dynamic"] = run.reduced(
                    "onnx-int8-dynamic", "int8-dynamic", src, stage, lambda dst: Q.quantize_dynamic_int8(src, dst),
                    opt.min_cosine_int8, {"quantization": {"mode": "dynamic", "weights": "int8 symmetric per-channel",
                                                           "activations": "uint8 per-batch at run time",
                                                           "ops": "MatMul with constant weights"}})
            if "static" in opt.int8:
                n_cal = len(next(iter(run.calib.values())))
                sources["int8-static"] = run.reduced(
                    "onnx-int8-static", "int8-static", src, stage,
                    lambda dst: Q.quantize_static_int8(src, dst, run.calib, method=opt.calib_method),
                    opt.min_cosine_int8, {"quantization": {
                        "mode": "static", "format": "QDQ", "weights": "int8 symmetric per-channel",
                        "activations": "int8 symmetric per-tensor", "calibration": opt.calib_method,
                        "calibration_samples": n_cal, "calibration_split": "train",
                        "calibration_data": str(opt.calib_data),
                        "ops": "MatMul/Gemm with constant weights, Conv"}})
            if opt.fp16:
                sources["fp16"] = run.reduced(
                    "onnx-fp16", "fp16", src, stage, lambda dst: F.convert_fp16(src, dst), opt.min_cosine_fp16,
                    {"fp32_ops": list(F.FP32_OPS) + ["output tail (fusion-token mean, L2 normalisation)"],
                     "io_types": "float32"})
            if opt.trt:
                try:
                    run.trt(sources)
                except TensorRTUnavailable as exc:
                    kept = [a.path.name for a in run.result.artefacts if a.status == "ok"]
                    trt_error = (f"--trt: {exc}; " + (f"the ONNX artefacts were still written to {run.out} ({', '.join(kept)})"
                                                       if kept else "no ONNX artefact was kept (--no-onnx)"))
                    run.result.failures.append(trt_error)
    run.result.seconds = time.perf_counter() - started
    _write_json(run.out / SUMMARY_FILE, {**run.result.to_dict(), "options": {
        k: (str(v) if isinstance(v, (Path, BatchRange)) else v) for k, v in asdict(opt).items()}})
    if run.result.failures and raise_on_failure:
        raise ExportFailed(trt_error or "; ".join(run.result.failures), run.result)
    return run.result
