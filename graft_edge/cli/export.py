"""`graft-edge export`: a checkpoint -> checked ONNX (FP32 / INT8 / FP16), TensorRT engines and OpenVINO IR in one folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from graft_edge.cli.common import console, err_console, guarded
from graft_edge.errors import GraftError
from graft_edge.export import ExportOptions, export_model
from graft_edge.export.fusion import ATTENTION_OPS
from graft_edge.export.onnx import MAX_OPSET, MIN_OPSET
from graft_edge.export.options import check_calibration
from graft_edge.formats import FORMATS, Format, help_text, parse_formats
from graft_edge.serve.triton_repo import RepoOptions, model_config_pb2, write_repository

D = ExportOptions()  # the defaults shown and used by the options below

EXIT_CHECK_FAILED = 1  # the export ran but an artefact failed its check (or TensorRT was unavailable)


# the per-family flags of earlier versions, kept as aliases: MODE -> format name (graft_edge.formats)
INT8_MODES = {"dynamic": "int8", "static": "int8-static", "u8s8": "int8-u8s8"}
FUSED_MODES = {"fp32": "onnx-fused", "dynamic": "int8-fused"}
OPENVINO_MODES = {(n.split("-", 1)[1] if "-" in n else "fp32"): n for n, f in FORMATS.items() if f.runtime == "openvino"}


def _modes(values: list[str] | None, table: dict[str, str], flag: str, every: str) -> dict[str, str]:
    """Repeated or comma-separated MODEs of one alias flag -> {format name: the flag as typed}; `every` stands for
    all of them."""
    names: dict[str, str] = {}
    for value in values or []:
        for part in (p.strip().lower() for p in str(value).split(",")):
            if part == every:
                names.update({table[m]: f"{flag} {every}" for m in table if not (flag == "--int8" and m == "u8s8")})
            elif part in table:
                names[table[part]] = f"{flag} {part}"
            elif part:
                raise GraftError(f"{flag} {part!r}: expected {', '.join(table)} (or use --formats)")
    return names


def alias_formats(onnx: bool | None, int8: list[str] | None, fused: list[str] | None, fp16: bool, trt: bool,
                  openvino: list[str] | None) -> tuple[dict[str, str], list[str]]:
    """The format names the alias flags (--onnx, --int8, --fused, --fp16, --trt, --openvino) ask for, each with the
    flag that asked (for error lines), and notes.

    --trt adds the TensorRT engine of each asked precision: FP32 always, FP16 with --fp16, INT8 with --int8
    static (its Q/DQ source)."""
    names = ({"onnx": "--onnx"} if onnx is not False else {}) | _modes(int8, INT8_MODES, "--int8", "both")
    names |= _modes(fused, FUSED_MODES, "--fused", "all") | ({"fp16": "--fp16"} if fp16 else {})
    names |= _modes(openvino, OPENVINO_MODES, "--openvino", "all")
    notes = []
    if trt:
        names |= {"trt-fp32": "--trt"} | ({"trt-fp16": "--trt --fp16"} if fp16 else {})
        names |= {"trt-int8": "--trt --int8 static"} if "int8-static" in names else {}
        if "int8" in names and "int8-static" not in names:
            notes.append("TensorRT INT8 needs the static Q/DQ model (--int8 static): no INT8 engine built")
    return names, notes


def resolve_formats(formats: str | None, aliases: tuple[dict[str, str], list[str]]) -> tuple[Format, ...]:
    """--formats (parsed here, once) plus the formats the alias flags named -> the rows to keep, in table order."""
    rows = set(parse_formats(formats)) if formats else set()
    rows |= {FORMATS[n] for n in aliases[0]}
    if not rows:
        raise GraftError("nothing to export: --no-onnx without --formats, --int8, --fused, --fp16, --trt or --openvino")
    return tuple(f for f in FORMATS.values() if f in rows)


FUSED_HELP = "; ".join(f"'{mode}': NAME{FORMATS[name].suffix} ({FORMATS[name].help})" for mode, name in FUSED_MODES.items())
OPENVINO_HELP = "; ".join(f"'{mode}': NAME{FORMATS[name].suffix} ({FORMATS[name].help})"
                          for mode, name in OPENVINO_MODES.items())


def _summary_table(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"export of {result.source.name} -> {result.out_dir}"),
                  caption="max diff: largest |ONNX - PyTorch| embedding value; cos: worst cosine with PyTorch FP32")
    table.add_column("artefact", no_wrap=True)
    for col in ("MB", "max diff", "cos real", "cos rand", "s"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for art in result.artefacts:
        p = art.parity or {}
        worst = {}
        for check in p.get("checks", []):
            kind = check["inputs"]
            worst[kind] = min(worst.get(kind, 2.0), check["min_cosine"])
        name = art.files[0].name if art.files else art.path.name
        status = {"ok": "[green]ok[/]", "failed": "[red]FAILED[/]", "staged": "not kept"}.get(art.status, escape(art.status))
        table.add_row(
            escape(name), f"{art.size_bytes / 1e6:.1f}",
            f"{p['max_abs_diff']:.1e}" if "max_abs_diff" in p else "-",
            f"{worst['real']:.5f}" if "real" in worst else "-",
            f"{worst['random']:.5f}" if "random" in worst else "-",
            f"{art.seconds:.0f}", status,
        )
    console().print(table)
    for note in result.notes:
        console().print(f"note: {escape(note)}")


@guarded
def export_cmd(
    model: Path = typer.Argument(..., help="Checkpoint (.pt) written by graft-edge init/train/prune."),
    out: Path = typer.Option(..., "--out", help="Folder for the artefacts (created; existing files of the same names are replaced)."),
    formats: Optional[str] = typer.Option(None, "--formats", help=f"Comma-separated formats to write (the names of `frontier --formats`; what they are built from is built and checked too, and kept only when listed): {help_text()}. The flags below are shorthands for these names."),
    onnx: Optional[bool] = typer.Option(None, "--onnx/--no-onnx", help="Keep the FP32 ONNX NAME.onnx in OUT (default: yes, unless --formats is given without it). It is built and checked whenever a format derives from it (INT8, FP16, TensorRT, OpenVINO); --no-onnx only skips keeping it."),
    int8: Optional[List[str]] = typer.Option(None, "--int8", help=f"INT8 ONNX Runtime models: 'dynamic' (NAME{FORMATS['int8'].suffix}: {FORMATS['int8'].help}) and/or 'static' (NAME{FORMATS['int8-static'].suffix}: {FORMATS['int8-static'].help} from --calib-data; also TensorRT's INT8 source) and/or 'u8s8' (NAME{FORMATS['int8-u8s8'].suffix}: {FORMATS['int8-u8s8'].help}, from --calib-data). Repeat, or give 'dynamic,static'."),
    fused: Optional[List[str]] = typer.Option(None, "--fused", help=f"Fused-attention ONNX (every attention one ONNX Runtime contrib node; CPU ONNX Runtime only): {FUSED_HELP}. Repeat, give a comma-separated list, or 'all'."),
    attention_op: str = typer.Option(D.attention_op, "--attention-op", help=f"Contrib op of the --fused graphs: {' or '.join(ATTENTION_OPS)} (Attention holds the q|k|v projection and becomes QAttention under dynamic INT8; static Q/DQ leaves it FP32)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 ONNX NAME.fp16.onnx: LayerNorm/Softmax/reductions kept FP32, FP32 inputs/outputs (TensorRT >= 11 FP16 source; GPU EPs)."),
    openvino: Optional[List[str]] = typer.Option(None, "--openvino", help=f"OpenVINO IR (.xml + .bin), checked through OpenVINO: {OPENVINO_HELP}. Repeat, give a comma-separated list, or 'all'. int8 needs --calib-data; bf16 needs a CPU with AVX512-BF16 or AMX."),
    trt: bool = typer.Option(False, "--trt", help="Also build TensorRT engines NAME.trt-fp32.engine (+ -fp16 with --fp16, -int8 with --int8 static). Needs the tensorrt package (graft-edge's trt extra) and an NVIDIA GPU."),
    batch: str = typer.Option(str(D.batch), "--batch", help="TensorRT optimisation profile, batch sizes MIN:OPT:MAX (or one N): engines accept MIN..MAX images and are tuned for OPT."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Dataset root (RGBNT100/RGBN300 layout) with the model's modalities: its train split calibrates --int8 static; its gallery split adds real-image parity checks."),
    calib_samples: int = typer.Option(D.calib_samples, "--calib-samples", help="Calibration images taken evenly from the train split (minimum 16; all of them when the split is smaller)."),
    calib_method: str = typer.Option(D.calib_method, "--calib-method", help="Static INT8 activation ranges: minmax (fast, low memory), percentile (99.999th of |x|; ignores rare outliers) or entropy."),
    opset: int = typer.Option(D.opset, "--opset", help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} with this torch's exporter (the default is the most portable to TensorRT 10 / JetPack)."),
    tolerance: float = typer.Option(D.tolerance, "--tolerance", help="FP32 check: largest allowed absolute difference between ONNX Runtime and PyTorch embedding values (L2-normalised), batch 1 and 4."),
    min_cosine_int8: float = typer.Option(D.min_cosine_int8, "--min-cosine-int8", help="INT8 check: smallest allowed cosine between INT8 and FP32 embeddings of the same input (real images when --calib-data is given, else random ones)."),
    min_cosine_fp16: float = typer.Option(D.min_cosine_fp16, "--min-cosine-fp16", help="FP16 check: smallest allowed cosine between FP16 and FP32 embeddings."),
    min_cosine_bf16: float = typer.Option(D.min_cosine_bf16, "--min-cosine-bf16", help="bf16 check (--openvino bf16): smallest allowed cosine between bf16 and FP32 embeddings."),
    workspace: int = typer.Option(D.workspace_mb, "--workspace", help="TensorRT builder workspace limit, MiB."),
    sparse_weights: Optional[bool] = typer.Option(None, "--sparse-weights/--no-sparse-weights", help="TensorRT SPARSE_WEIGHTS (2:4 sparse tensor cores). Default: on when the checkpoint's pruning history says 2:4."),
    name: str = typer.Option(D.name, "--name", help="File stem of the artefacts (NAME.onnx, NAME.json, ...)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout instead of the table (progress stays on stderr)."),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Also write a Triton model repository here: one model per ONNX / TensorRT artefact (ONNX Runtime / TensorRT backend) with its config.pbtxt."),
    triton_max_batch: int = typer.Option(64, "--triton-max-batch", help="max_batch_size of the Triton models (capped by an engine's --batch MAX).", min=1),
    triton_queue_delay_us: int = typer.Option(2000, "--triton-queue-delay-us", help="Dynamic batcher: microseconds a request may wait for others.", min=0),
    triton_instances: int = typer.Option(1, "--triton-instances", help="Instances per Triton model.", min=1),
    triton_gpu: bool = typer.Option(False, "--triton-gpu", help="Run the ONNX models on GPU instances (TensorRT engines always are)."),
) -> None:
    """Export a checkpoint for deployment: ONNX (dynamic batch, one input per modality + `present`, output `embedding`),
    ONNX Runtime INT8 (dynamic / static Q/DQ), FP16 ONNX, TensorRT engines and OpenVINO IR (FP32 / bf16 / NNCF INT8).

    Every artefact is checked against PyTorch on random inputs at batch 1 and 4 and, with --calib-data,
    on real gallery images at batch 1 and 16, and once per proper subset of the modalities (the graph takes a
    `present` mask, so a missing sensor still gives PyTorch's embedding); it carries its metadata (ONNX metadata_props and a NAME.json sidecar). Exit 0 when all
    checks pass, 1 when an artefact failed its check (kept as *.failed) or TensorRT was unavailable,
    2 on bad input (nothing written).
    """
    aliases = alias_formats(onnx if onnx is not None else not formats, int8, fused, fp16, trt, openvino)
    check_calibration(aliases[0], calib_data)
    options = ExportOptions(
        formats=resolve_formats(formats, aliases), attention_op=attention_op, batch=batch,
        min_cosine_bf16=min_cosine_bf16,
        calib_data=calib_data, calib_samples=calib_samples, calib_method=calib_method.strip().lower(), opset=opset,
        tolerance=tolerance, min_cosine_int8=min_cosine_int8, min_cosine_fp16=min_cosine_fp16,
        workspace_mb=workspace, sparse_weights=sparse_weights, name=name,
    )
    log_console = err_console()

    def log(msg: str) -> None:
        from rich.markup import escape

        text = escape(msg)
        for word, style in (("ok ", "green"), ("FAILED ", "bold red")):
            if msg.startswith(word):
                text = f"[{style}]{word.strip()}[/] " + escape(msg[len(word):])
        log_console.print(text, soft_wrap=True, emoji=False)

    repo = RepoOptions(max_batch=triton_max_batch, queue_delay_us=triton_queue_delay_us, instances=triton_instances,
                       gpu=triton_gpu).validated() if triton is not None else None
    if repo is not None:
        model_config_pb2()  # fail before exporting when tritonclient is missing
    for note in aliases[1]:
        log(f"note: {note}")
    result = export_model(model, out, options, log=log, raise_on_failure=False)
    if repo is not None:
        kept = [a.path for a in result.artefacts if a.status == "ok"]
        for name, folder in write_repository(kept, triton, repo).items():
            log(f"ok Triton model {name}: {folder}")
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        _summary_table(result)
    if not result.ok:
        from rich.markup import escape

        kept = [a.path.name for a in result.artefacts if a.status == "ok"]
        written = f"; the other artefacts were still written to {out} ({', '.join(kept)})" if kept else ""
        for i, failure in enumerate(result.failures):
            tail = written if i == len(result.failures) - 1 else ""
            log_console.print(f"[bold red]error:[/] {escape(failure + tail)}", soft_wrap=True, emoji=False)
        raise typer.Exit(EXIT_CHECK_FAILED)
