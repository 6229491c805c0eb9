"""`index build / add / search`: embed a gallery once with any artefact, search it later (FAISS)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import typer

from graft_edge.cli.common import console, err_console, guarded, warn_if_batch_dependent, write_json_output
from graft_edge.errors import GraftError
from graft_edge.retrieval.images import find_images
from graft_edge.retrieval.index import (
    IndexOptions,
    add_to_index,
    build_index,
    check_model,
    embed_samples,
    load_entries,
    model_identity,
    read_manifest,
    search_index,
)
from graft_edge.retrieval.metrics import RerankConfig
from graft_edge.retrieval.visualize import write_ranked_strips
from graft_edge.runtime import load_embedder

index_app = typer.Typer(help="A persistent gallery index: build it once, add images, search it.", no_args_is_help=True)

MODEL_HELP = "Checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.engine) that embeds the images."
IMAGES_HELP = ("A dataset root (RGBNT100/RGBN300 or per-modality layout) or a folder of image files "
               "(side-by-side modalities; PID_cCAM_FRAME names give ids/cameras).")


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(advance(n), set_total(n)) callbacks driving a transient progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console(), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield (lambda n: bar.advance(task, n)), (lambda n: bar.update(task, total=n))


@index_app.command("build")
@guarded
def build_cmd(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    images: Path = typer.Argument(..., help=IMAGES_HELP),
    out: Path = typer.Option(..., "--out", help="Index folder to create (or to finish, after an interrupted build)."),
    faiss_spec: str = typer.Option("Flat", "--faiss", help="FAISS factory string: Flat (exact inner product) or e.g. "
                                   "IVF1024,PQ32 for millions of images (trained on the built images)."),
    split: str = typer.Option("gallery", "--split", help="Split of a dataset root to index: gallery, query or train."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass and per resumable batch.", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
) -> None:
    """Embed IMAGES with MODEL into a new index; rerun the same command to finish an interrupted build."""
    embedder = load_embedder(model, device=device, threads=threads)
    warn_if_batch_dependent(model, embedder, "queries embedded online (serve, index search) will not match this "
                            "gallery's embeddings exactly")
    with progress_bar("embedding gallery") as (advance, total):
        options = IndexOptions(faiss_spec, batch_size, split)
        manifest = build_index(model, embedder, images, out, options, advance, total)
    resumed = manifest["parts"][-1].get("resumed", 0)
    kept = f" ({resumed} embedded by the interrupted run, kept)" if resumed else ""
    console().print(f"index {out}: {manifest['count']} images, {manifest['model']['embed_dim']}-d, "
                    f"FAISS {manifest['faiss']}{kept}", soft_wrap=True)


@index_app.command("add")
@guarded
def add_cmd(
    index: Path = typer.Argument(..., help="Index folder made by `index build`."),
    images: Path = typer.Argument(..., help=IMAGES_HELP + " Images already in the index are skipped."),
    model: Optional[Path] = typer.Option(None, "--model", help="The index's model (default: the path it recorded)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass and per resumable batch.", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
) -> None:
    """Embed the images of IMAGES not yet in INDEX and add them (resumable like build)."""
    model = model or Path(read_manifest(index)["model"]["path"])
    embedder = load_embedder(model, device=device, threads=threads)
    with progress_bar("embedding new images") as (advance, total):
        manifest, added = add_to_index(model, embedder, images, index, batch_size, advance, total)
    console().print(f"index {index}: added {added} images, {manifest['count']} in all", soft_wrap=True)


def search_records(result: Any, queries: list, entries: list) -> list[dict[str, Any]]:
    """JSON-ready ranked gallery entries per query."""
    def describe(s: Any) -> dict[str, Any]:
        return {"path": str(s.sources[0].path), "id": s.pid if s.pid >= 0 else None,
                "camera": s.camid if s.camid >= 0 else None}

    return [{**describe(q), "results": [{"rank": r + 1, **describe(entries[j]), "distance": float(d)}
                                        for r, (j, d) in enumerate(zip(idx, dist)) if j >= 0]}
            for q, idx, dist in zip(queries, result.indices, result.distances)]


@index_app.command("search")
@guarded
def search_cmd(
    index: Path = typer.Argument(..., help="Index folder made by `index build`."),
    queries: Path = typer.Argument(..., help=IMAGES_HELP + " A dataset root's query split is used."),
    top: int = typer.Option(10, "--top", help="Gallery entries returned per query.", min=1),
    model: Optional[Path] = typer.Option(None, "--model",
                                         help="Model for the queries: the index's own (default: its recorded path)."),
    rerank: bool = typer.Option(False, "--rerank", help="k-reciprocal re-ranking of each query's FAISS candidates."),
    pool: int = typer.Option(1000, "--rerank-pool", help="FAISS candidates per query that --rerank re-ranks.", min=1),
    k1: int = typer.Option(20, "--rerank-k1", help="Re-ranking: k-reciprocal neighbours per image.", min=1),
    k2: int = typer.Option(6, "--rerank-k2", help="Re-ranking: neighbours averaged in query expansion (1: none).",
                            min=1),
    lambda_value: float = typer.Option(0.3, "--rerank-lambda", min=0.0, max=1.0,
                                       help="Re-ranking: weight of the original distance (0..1)."),
    nprobe: int = typer.Option(16, "--nprobe", help="IVF lists visited per query (IVF indexes only).", min=1),
    json_out: Optional[Path] = typer.Option(None, "--json",
                                           help="Write the ranked entries as JSON to this file ('-' for stdout)."),
    visualize: int = typer.Option(0, "--visualize", min=0,
                                  help="Write ranked-result strips for this many queries (0: none)."),
    vis_dir: Optional[Path] = typer.Option(None, "--visualize-dir", help="Folder for strips (default INDEX/ranked)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Query images per forward pass.", min=1),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
) -> None:
    """Print (and with --json write) the top gallery entries of every query image, with distances."""
    manifest = read_manifest(index)
    model = model or Path(manifest["model"]["path"])
    embedder = load_embedder(model, device=device, threads=threads)
    check_model(manifest, model_identity(model, embedder), index)
    samples = find_images(queries, embedder.info.modalities, "query")
    with progress_bar("embedding queries") as (advance, total):
        total(len(samples))
        feats = embed_samples(embedder, samples, batch_size, advance)
    rerank_cfg = RerankConfig(k1, k2, lambda_value) if rerank else None
    result = search_index(index, manifest, feats, top, rerank_cfg, pool, nprobe)
    entries = load_entries(index, manifest)
    records = search_records(result, samples, entries)
    _print_results(records)
    if visualize:
        _write_strips(vis_dir or index / "ranked", result, samples, entries, embedder.info.modalities, visualize)
    write_json_output(json_out, {"index": str(index), "model": str(model), "rerank": rerank, "queries": records})


def _print_results(records: list[dict[str, Any]], shown: int = 5) -> None:
    """One line per query: its file and the first few ranked gallery files with distances."""
    out = console()
    for rec in records:
        best = ", ".join(f"{Path(r['path']).name} {r['distance']:.3f}" for r in rec["results"][:shown])
        out.print(f"{Path(rec['path']).name}: {best}" + (" ..." if len(rec["results"]) > shown else ""), soft_wrap=True)


def _write_strips(out_dir: Path, result: Any, queries: list, entries: list, modalities: Any, count: int) -> None:
    """Strips of the searched ranking: a (Q, N) distance matrix with inf beyond the returned entries."""
    import numpy as np


    if not entries:
        raise GraftError("the index holds no images to show")
    dist = np.full((len(queries), len(entries)), np.inf, dtype=np.float32)
    for row, (idx, d) in enumerate(zip(result.indices, result.distances)):
        keep = idx >= 0
        dist[row, idx[keep]] = d[keep]
    top = int(result.indices.shape[1])
    files = write_ranked_strips(out_dir, dist, queries, entries, modalities, count, top, skip_same_camera=False)
    console().print(f"wrote {len(files)} ranked-result strips to {out_dir}", soft_wrap=True)
