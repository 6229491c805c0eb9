"""`init`, `inspect` and `eval`: make a model of a preset, describe any model file, measure its accuracy."""
from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from graft_edge.checkpoint import save_checkpoint
from graft_edge.cli.common import DTYPE_HELP, check_output_file, console, err_console, guarded, write_json_output
from graft_edge.config import get_preset, parse_modalities, validate
from graft_edge.errors import GraftError
from graft_edge.evaluation import (
    ALL_SUBSETS,
    embed_splits,
    evaluate_subsets,
    query_gallery_distances,
    score_splits,
    subset_label,
)
from graft_edge.model import build_model, embedding_params
from graft_edge.retrieval.metrics import RerankConfig
from graft_edge.retrieval.visualize import write_ranked_strips
from graft_edge.runtime import load_embedder
from graft_edge.runtime.presence import supports_subsets
from graft_edge.units import format_count


@guarded
def init_cmd(
    preset: str = typer.Argument(..., help="Architecture preset: rgbnt100 (3 modalities, distilled DeiT-B), rgbn300 (2), rgbnt100-dinov2, rgbnt100-clip (ViT-B/14 DINOv2, ViT-B/16 CLIP), synthetic (tiny ViT); rgbnt100-robust, synthetic-robust (same architectures, trained with modality dropout)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (.pt)."),
    num_ids: Optional[int] = typer.Option(None, "--num-ids", help="Classifier width (training identities). Default: the preset's (50 / 150 / 32)."),
    pretrained: bool = typer.Option(False, "--pretrained/--no-pretrained", help="Load ImageNet weights for the backbone (timm hub or --pretrained-file)."),
    pretrained_file: Optional[Path] = typer.Option(None, "--pretrained-file", help="Local backbone weights (.pth/.safetensors) instead of the hub."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="timm ViT name, e.g. deit_base_distilled_patch16_224. Default: the preset's."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated subset of rgb,nir,tir. Default: the preset's."),
    fusion: Optional[str] = typer.Option(None, "--fusion", help="token (GraFT), cls / avg (one joint encoder, Table 5) or multistream (one ViT per modality, the Tables 1-2 baseline). Default: token."),
) -> None:
    """Write a checkpoint of a preset's architecture (to inspect, benchmark or export before training)."""
    check_output_file(out, "--out")
    cfg = get_preset(preset)
    mcfg = replace(cfg.model, pretrained=pretrained,
                   pretrained_file=str(pretrained_file) if pretrained_file else cfg.model.pretrained_file)
    if num_ids is not None:
        if num_ids < 1:
            raise GraftError(f"--num-ids {num_ids}: expected a positive integer")
        mcfg = replace(mcfg, num_ids=num_ids)
    if backbone:
        mcfg = replace(mcfg, backbone=backbone)
    if modalities:
        mcfg = replace(mcfg, modalities=parse_modalities(modalities))
    if fusion:
        mcfg = replace(mcfg, fusion=fusion)
    cfg = validate(replace(cfg, model=mcfg))
    model = build_model(cfg.model)
    save_checkpoint(out, model, cfg)
    console().print(f"wrote {out}: {cfg.preset} ({','.join(mcfg.modalities)}), "
                    f"{format_count(embedding_params(model))} embedding parameters")


@contextlib.contextmanager
def _feature_bar() -> Iterator[Callable[[int], None]]:
    """A transient 'extracting features' bar on stderr; yields advance(n_samples)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("extracting features"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console(), transient=True) as bar:
        task = bar.add_task("eval", total=None)
        yield lambda n: bar.advance(task, n)


def _eval_every_subset(embedder: Any, model: Path, data: Path, batch_size: int, rerank_cfg: RerankConfig | None,
                       json_out: Optional[Path]) -> None:
    """`eval --modalities all`: print and write the robustness table (every non-empty subset, worst marked)."""
    from rich.table import Table

    if not supports_subsets(embedder.info) and len(embedder.info.modalities) > 1:
        raise GraftError(f"--modalities all: {model} needs all of {','.join(embedder.info.modalities)} (no "
                         "presence-mask input; re-export a fusion-token model with this graft-edge)")
    with _feature_bar() as advance:
        result = evaluate_subsets(embedder, data, batch_size=batch_size, progress=advance, rerank_cfg=rerank_cfg)
    worst = subset_label(result["worst"]["modalities"])
    table = Table(title=f"{model}: every subset of the sensors (test split, %)")
    for col in ("modalities", "mAP", "R1", "R5", "R10") + (("mAP re-ranked",) if rerank_cfg else ()):
        table.add_column(col, justify="left" if col == "modalities" else "right")
    for row in result["subsets"]:
        label = subset_label(row["modalities"])
        table.add_row(label + (" (worst)" if label == worst else ""),
                      *(f"{100 * row[k]:.2f}" for k in ("mAP", "R1", "R5", "R10")),
                      *((f"{100 * row['rerank']['mAP']:.2f}",) if rerank_cfg else ()))
    console().print(table)
    console().print(f"worst subset: {worst} (mAP {100 * result['worst']['mAP']:.2f}; every sensor "
                    f"{100 * result['mAP']:.2f}); query {result['num_query']}, gallery {result['num_gallery']}",
                    soft_wrap=True)
    write_json_output(json_out, {**result, "model": str(model), "data": str(data),
                                 "modalities": list(embedder.info.modalities)})


def describe_model(path: Path) -> dict:
    """The facts `inspect` prints for any model file."""
    info = load_embedder(path).info
    extra = dict(info.extra)
    return {
        "path": str(path), "format": info.format,
        "params_total": extra.pop("params_total", info.params_embedding),
        "params_embedding": info.params_embedding, "params_nonzero": info.params_nonzero,
        "modalities": list(info.modalities), "backbone": extra.pop("backbone", None),
        "input_size": list(info.img_size), "embed_dim": info.embed_dim,
        "mean": list(info.mean), "std": list(info.std),
        "history": extra.pop("history", []), "file_size": extra.pop("file_size", path.stat().st_size),
        **extra,
    }


def history_line(step: dict) -> str:
    """One pruning step for people: 'structured 1/3: 265.47K params (265.47K nonzero), mAP 25.58, R1 21.88'."""
    if not isinstance(step, dict) or "method" not in step:
        return json.dumps(step, default=str)
    line = f"{step['method']} {step.get('step', '?')}/{step.get('steps', '?')}"
    if isinstance(step.get("params_embedding"), int):
        line += f": {format_count(step['params_embedding'])} params"
    if isinstance(step.get("params_nonzero"), int):
        line += f" ({format_count(step['params_nonzero'])} nonzero)"
    return line + "".join(f", {k} {100 * step[k]:.2f}" for k in ("mAP", "R1") if isinstance(step.get(k), float))


@guarded
def inspect_cmd(
    model: Path = typer.Argument(..., help="Checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.engine)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
) -> None:
    """Describe a model: parameters (total / embedding / nonzero), modalities, input size, pruning history."""
    from rich.table import Table

    facts = describe_model(model)
    if as_json:
        typer.echo(json.dumps(facts, indent=2, default=str))
        return
    table = Table(title=str(model), show_header=False)
    for key, value in facts.items():
        if key.startswith("params") and isinstance(value, int):
            value = f"{format_count(value)} ({value:,})"
        elif key == "file_size":
            value = f"{value / 1e6:.1f} MB"
        elif key == "history":
            value = "\n".join(history_line(h) for h in value) or "-"
        table.add_row(key, str(value))
    console().print(table)


@guarded
def eval_cmd(
    model: Path = typer.Argument(..., help="Checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.engine)."),
    data: Path = typer.Option(..., "--data", help="Dataset root in the RGBNT100/RGBN300 layout (query + gallery are used)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON to this file ('-' for stdout)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass.", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: all cores)."),
    rerank: bool = typer.Option(False, "--rerank", help="Also report k-reciprocal re-ranked mAP/CMC (Zhong et al. 2017)."),
    k1: int = typer.Option(20, "--rerank-k1", help="Re-ranking: k-reciprocal neighbours per image.", min=1),
    k2: int = typer.Option(6, "--rerank-k2", help="Re-ranking: neighbours averaged in local query expansion (1: none).", min=1),
    lambda_value: float = typer.Option(0.3, "--rerank-lambda", help="Re-ranking: weight of the original distance (0..1).",
                                       min=0.0, max=1.0),
    visualize: int = typer.Option(0, "--visualize", help="Write ranked-result strips for this many queries (0: none).", min=0),
    top_k: int = typer.Option(10, "--top", help="Gallery images per strip.", min=1),
    vis_dir: Optional[Path] = typer.Option(None, "--visualize-dir", help="Folder for the strips. Default: ./ranked_<model name>."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated subset of the model's modalities (e.g. rgb,nir): evaluate as if the other sensors were missing; 'all': the robustness table, every non-empty subset (one pass over the data; the JSON's 'subsets' and 'worst'). Default: every modality."),
    dtype: str = typer.Option("fp32", "--dtype", help=f"Precision PyTorch checkpoints run at: {DTYPE_HELP}. Exported artefacts run at the precision they were exported in."),
) -> None:
    """Extract query/gallery features and report mAP and CMC rank-1/5/10 (Market-1501 protocol)."""
    check_output_file(json_out, "--json")
    every = modalities is not None and modalities.strip().lower() == ALL_SUBSETS
    if every and visualize:
        raise GraftError("--visualize draws one ranking: pass one subset to --modalities, not 'all'")
    embedder = load_embedder(model, device=device, threads=threads, modalities=None if every else modalities,
                             dtype=dtype)
    rerank_cfg = RerankConfig(k1, k2, lambda_value) if rerank else None
    if every:
        _eval_every_subset(embedder, model, data, batch_size, rerank_cfg, json_out)
        return
    with _feature_bar() as advance:
        query, gallery = embed_splits(embedder, data, batch_size=batch_size, progress=advance)
    dist = query_gallery_distances(query, gallery, rerank_cfg) if rerank_cfg and visualize else None
    result = score_splits(query, gallery, rerank_cfg, reranked=dist)
    console().print(
        f"mAP {100 * result['mAP']:.2f}  R1 {100 * result['R1']:.2f}  R5 {100 * result['R5']:.2f}  "
        f"R10 {100 * result['R10']:.2f}  (query {result['num_query']}, gallery {result['num_gallery']}"
        + (f", {result['num_query_skipped']} queries without a match skipped" if result["num_query_skipped"] else "") + ")"
    )
    if rerank_cfg is not None:
        rr = result["rerank"]
        console().print(f"re-ranked (k1 {k1}, k2 {k2}, lambda {lambda_value}): mAP {100 * rr['mAP']:.2f}  "
                        f"R1 {100 * rr['R1']:.2f}  R5 {100 * rr['R5']:.2f}  R10 {100 * rr['R10']:.2f}")
    if visualize:
        out_dir = vis_dir or Path(f"ranked_{model.stem}")
        if dist is None:
            dist = query_gallery_distances(query, gallery, None)
        files = write_ranked_strips(out_dir, dist, query.samples, gallery.samples, embedder.info.modalities,
                                    visualize, top_k)
        console().print(f"wrote {len(files)} ranked-result strips to {out_dir}"
                        + (" (re-ranked order)" if rerank_cfg else ""), soft_wrap=True)
    write_json_output(json_out, {**result, "model": str(model), "data": str(data),
                                 "modalities": list(embedder.info.modalities)})
