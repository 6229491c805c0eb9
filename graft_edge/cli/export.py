"""`graft-edge export`: a checkpoint -> checked ONNX (FP32 / INT8 / FP16), TensorRT engines and OpenVINO IR in one folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from graft_edge.cli.common import console, err_console, guarded
from graft_edge.export import ExportOptions, export_model
from graft_edge.export.fusion import ATTENTION_OPS
from graft_edge.export.onnx import MAX_OPSET, MIN_OPSET
from graft_edge.export.options import FUSED_MODES, OPENVINO_MODES
from graft_edge.formats import FORMATS
from graft_edge.serve.triton_repo import RepoOptions, model_config_pb2, write_repository

D = ExportOptions()  # the defaults shown and used by the options below

EXIT_CHECK_FAILED = 1  # the export ran but an artefact failed its check (or TensorRT was unavailable)


def _modes(values: list[str] | None, every: tuple[str, ...], word: str) -> tuple[str, ...]:
    """Repeated or comma-separated modes; `word` (both / all) stands for every mode."""
    modes: list[str] = []
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip().lower()
            if part == word:
                modes += list(every)
            elif part:
                modes.append(part)
    return tuple(dict.fromkeys(modes))


def _int8_modes(values: list[str] | None) -> tuple[str, ...]:
    """--int8 dynamic --int8 static, --int8 dynamic,static or --int8 both -> ('dynamic', 'static')."""
    return _modes(values, ("dynamic", "static"), "both")


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
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Keep the FP32 ONNX NAME.onnx in OUT. It is always built and checked (INT8/FP16/TensorRT derive from it); --no-onnx only skips keeping it."),
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
    options = ExportOptions(
        onnx=onnx, int8=_int8_modes(int8), fused=_modes(fused, tuple(FUSED_MODES), "all"), attention_op=attention_op,
        fp16=fp16, trt=trt, openvino=_modes(openvino, tuple(OPENVINO_MODES), "all"),
        batch=batch, min_cosine_bf16=min_cosine_bf16,
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

        for failure in result.failures:
            log_console.print(f"[bold red]error:[/] {escape(failure)}", soft_wrap=True, emoji=False)
        raise typer.Exit(EXIT_CHECK_FAILED)
