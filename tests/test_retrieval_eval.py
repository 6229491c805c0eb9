"""`eval --rerank --visualize`, `bench --rerank`: plain and re-ranked metrics, strips with the expected grid/colours."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _export_fixtures import make_checkpoint, write_dataset
from PIL import Image
from typer.testing import CliRunner

from graft_edge.cli.main import app
from graft_edge.evaluation import embed_splits, query_gallery_distances, score_splits
from graft_edge.retrieval.metrics import RerankConfig, evaluate_rank
from graft_edge.retrieval.visualize import GREEN, RED, StripLayout, ranked_entries
from graft_edge.runtime import load_embedder

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalrr")
    mods = ("rgb", "tir")
    return make_checkpoint(base / "m.pt", mods), write_dataset(base / "ds", mods, n_train=4, n_gallery=16, n_query=6)


def test_score_splits_reports_both(setup) -> None:
    ckpt, data = setup
    query, gallery = embed_splits(load_embedder(ckpt), data, batch_size=8)
    cfg = RerankConfig(k1=5, k2=2, lambda_value=0.3)
    res = score_splits(query, gallery, cfg)
    expected = evaluate_rank(query_gallery_distances(query, gallery, cfg), query.ids, gallery.ids, query.cams,
                             gallery.cams)
    assert res["rerank"]["mAP"] == pytest.approx(expected.mAP) and res["rerank"]["k1"] == 5
    assert "rerank" not in score_splits(query, gallery)


def test_eval_cli_rerank_and_strips(setup, tmp_path: Path) -> None:
    ckpt, data = setup
    out, strips = tmp_path / "m.json", tmp_path / "strips"
    res = runner.invoke(app, ["eval", str(ckpt), "--data", str(data), "--rerank", "--rerank-k1", "5",
                              "--rerank-k2", "2", "--visualize", "3", "--top", "4", "--visualize-dir", str(strips),
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert "re-ranked (k1 5, k2 2, lambda 0.3)" in res.output and 0.0 <= doc["rerank"]["mAP"] <= 1.0
    files = sorted(strips.glob("*.png"))
    assert len(files) == 3
    layout = StripLayout.for_image(64, 32)  # the fixture's slots are 64 x 32: cells 256 x 128
    assert Image.open(files[0]).size == layout.size(4, 2) == ((1 + 4) * 264 + 12, 2 * 136 + 14)
    # frame colours follow the identities of the re-ranked order of the first query
    emb = load_embedder(ckpt)
    query, gallery = embed_splits(emb, data, batch_size=8)
    dist = query_gallery_distances(query, gallery, RerankConfig(5, 2, 0.3))
    top = ranked_entries(dist[0], int(query.ids[0]), int(query.cams[0]), gallery.ids.tolist(), gallery.cams.tolist(), 4)
    pixels = np.asarray(Image.open(files[0]).convert("RGB"))
    cw = layout.cell[0] + 2 * layout.border
    for col, j in enumerate(top, start=1):
        frame = tuple(pixels[layout.caption + 1, col * cw + layout.gap + 1])
        assert frame == (GREEN if gallery.ids[j] == query.ids[0] else RED)


def test_eval_cli_bad_rerank_option(setup) -> None:
    ckpt, data = setup
    res = runner.invoke(app, ["eval", str(ckpt), "--data", str(data), "--rerank", "--rerank-lambda", "2"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_bench_data_rerank(setup, tmp_path: Path) -> None:
    ckpt, data = setup
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", str(ckpt), "--iters", "2", "--warmup", "0", "--data", str(data), "--rerank",
                              "--json", str(out)])
    assert res.exit_code == 0, res.output
    acc = json.loads(out.read_text())["results"][0]["accuracy"]
    query, gallery = embed_splits(load_embedder(ckpt), data, batch_size=8)
    expected = score_splits(query, gallery, RerankConfig())
    assert acc["rerank"]["mAP"] == pytest.approx(expected["rerank"]["mAP"])
    assert acc["mAP"] == pytest.approx(expected["mAP"])


def test_eval_rerank_equals_rerank_of_distance_blocks(setup) -> None:
    """eval re-ranks from features; the result is rerank() of the three distance matrices."""
    from graft_edge.retrieval.metrics import pairwise_distance, rerank

    ckpt, data = setup
    query, gallery = embed_splits(load_embedder(ckpt), data, batch_size=8)
    q, g = query.feats, gallery.feats
    blocks = rerank(pairwise_distance(q, g), pairwise_distance(q, q), pairwise_distance(g, g), 5, 2, 0.3)
    np.testing.assert_allclose(query_gallery_distances(query, gallery, RerankConfig(5, 2, 0.3)), blocks, atol=1e-5)
