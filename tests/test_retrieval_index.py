"""Gallery index: same ranking as eval's distance matrix, incremental add, resume, model refusal, the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _export_fixtures import make_checkpoint, write_dataset
from PIL import Image
from typer.testing import CliRunner

from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.evaluation import embed_splits
from graft_edge.retrieval.images import find_images
from graft_edge.retrieval.index import (
    IndexOptions,
    add_to_index,
    build_index,
    embed_samples,
    load_entries,
    read_manifest,
    search_index,
)
from graft_edge.retrieval.metrics import pairwise_distance
from graft_edge.retrieval.visualize import StripLayout
from graft_edge.runtime import load_embedder

runner = CliRunner()
MODS = ("rgb", "nir", "tir")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 3-modality checkpoint, a second one (other weights), and a dataset with 12 gallery / 5 query images."""
    base = tmp_path_factory.mktemp("retrieval")
    ckpt = make_checkpoint(base / "a.pt", MODS, seed=0)
    other = make_checkpoint(base / "b.pt", MODS, seed=1)
    data = write_dataset(base / "ds", MODS, n_train=4, n_gallery=12, n_query=5)
    return ckpt, other, data


class CountingEmbedder:
    """Wraps an embedder, counting embedded images; raises KeyboardInterrupt after `stop_after` batches."""

    def __init__(self, inner, stop_after: int | None = None) -> None:
        self.inner, self.info, self.stop_after = inner, inner.info, stop_after
        self.images, self.calls = 0, 0

    def embed(self, batch):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        out = self.inner.embed(batch)
        self.images += len(out)
        return out


def test_round_trip_same_top10_as_eval(setup, tmp_path: Path) -> None:
    ckpt, _, data = setup
    emb = load_embedder(ckpt)
    manifest = build_index(ckpt, emb, data, tmp_path / "idx", IndexOptions(batch_size=5))
    assert manifest["count"] == 12 and manifest["parts"][0]["complete"]
    query, gallery = embed_splits(emb, data, batch_size=4)
    dist = pairwise_distance(query.feats, gallery.feats)
    q_feats = embed_samples(emb, find_images(data, MODS, "query"), batch_size=3)
    result = search_index(tmp_path / "idx", manifest, q_feats, top=10)
    assert result.indices.tolist() == np.argsort(dist, axis=1, kind="stable")[:, :10].tolist()
    np.testing.assert_allclose(result.distances, np.sort(dist, axis=1)[:, :10], atol=1e-4)
    entries = load_entries(tmp_path / "idx", manifest)
    assert [e.sources[0].path.name for e in entries] == [s.sources[0].path.name for s in gallery.samples]
    # re-ranking over the whole gallery (pool >= gallery) equals eval's re-ranked order
    from graft_edge.evaluation import query_gallery_distances
    from graft_edge.retrieval.metrics import RerankConfig

    cfg = RerankConfig(k1=4, k2=2, lambda_value=0.3)
    rr = search_index(tmp_path / "idx", manifest, q_feats, top=10, rerank_cfg=cfg)
    ref = query_gallery_distances(query, gallery, cfg)
    assert rr.indices.tolist() == np.argsort(ref, axis=1, kind="stable")[:, :10].tolist()


def test_incremental_add_skips_known_images(setup, tmp_path: Path) -> None:
    ckpt, _, data = setup
    emb = load_embedder(ckpt)
    half = tmp_path / "first"
    half.mkdir()
    files = sorted((data / "rgbir" / "bounding_box_test").iterdir())
    for f in files[:7]:
        shutil.copy(f, half / f.name)
    build_index(ckpt, emb, half, tmp_path / "idx", IndexOptions(batch_size=4))
    counter = CountingEmbedder(emb)
    manifest, added = add_to_index(ckpt, counter, data / "rgbir" / "bounding_box_test", tmp_path / "idx")
    assert added == 12 and counter.images == 12  # other paths: every file of the folder is new
    manifest, added = add_to_index(ckpt, counter, half, tmp_path / "idx")
    assert added == 0 and counter.images == 12 and manifest["count"] == 19
    for f in files[7:9]:
        shutil.copy(f, half / f.name)
    manifest, added = add_to_index(ckpt, counter, half, tmp_path / "idx", batch_size=1)
    assert added == 2 and counter.images == 14 and manifest["count"] == 21 and manifest["faiss_count"] == 21
    q = embed_samples(emb, find_images(half, MODS, "gallery"))
    res = search_index(tmp_path / "idx", manifest, q[-2:], top=2)
    # each added image finds itself and its copy from the full folder (entries 7+7, 7+8), both at distance ~0
    assert [sorted(r) for r in res.indices.tolist()] == [[14, 19], [15, 20]] and np.all(res.distances < 1e-3)
    names = [e.sources[0].path for e in load_entries(tmp_path / "idx", manifest)]
    assert names[19:] == [(half / f.name).resolve() for f in files[7:9]]


def test_resume_after_interrupted_build(setup, tmp_path: Path) -> None:
    ckpt, _, data = setup
    emb = load_embedder(ckpt)
    with pytest.raises(KeyboardInterrupt):
        build_index(ckpt, CountingEmbedder(emb, stop_after=2), data, tmp_path / "idx", IndexOptions(batch_size=3))
    assert not read_manifest(tmp_path / "idx")["parts"][0]["complete"]
    assert len(list((tmp_path / "idx" / "part-000").glob("batch-*.npy"))) == 2
    counter = CountingEmbedder(emb)
    seen: list[int] = []
    manifest = build_index(ckpt, counter, data, tmp_path / "idx", IndexOptions(batch_size=3), progress=seen.append)
    assert counter.images == 12 - 6 and counter.calls == 2 and seen[0] == 6 and sum(seen) == 12
    assert manifest["count"] == 12 and manifest["faiss_count"] == 12 and manifest["parts"][0]["resumed"] == 6
    fresh = build_index(ckpt, emb, data, tmp_path / "fresh", IndexOptions(batch_size=12))
    q = embed_samples(emb, find_images(data, MODS, "query"))
    a, b = search_index(tmp_path / "idx", manifest, q, 5), search_index(tmp_path / "fresh", fresh, q, 5)
    assert a.indices.tolist() == b.indices.tolist()


def test_other_model_is_refused(setup, tmp_path: Path) -> None:
    ckpt, other, data = setup
    build_index(ckpt, load_embedder(ckpt), data, tmp_path / "idx")
    with pytest.raises(GraftError, match="not comparable"):
        add_to_index(other, load_embedder(other), data, tmp_path / "idx")
    res = runner.invoke(app, ["index", "search", str(tmp_path / "idx"), str(data), "--model", str(other)])
    assert res.exit_code == 2 and "was built with" in res.output and "not comparable" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_ivfpq_option(setup, tmp_path: Path) -> None:
    ckpt, _, data = setup
    emb = load_embedder(ckpt)
    manifest = build_index(ckpt, emb, data, tmp_path / "idx", IndexOptions(faiss="IVF2,Flat"))
    q = embed_samples(emb, find_images(data, MODS, "query"))
    exact = search_index(tmp_path / "idx", manifest, q, 5, nprobe=2)  # all lists visited: exact
    query, gallery = embed_splits(emb, data, batch_size=4)
    assert exact.indices.tolist() == np.argsort(pairwise_distance(query.feats, gallery.feats), axis=1,
                                                kind="stable")[:, :5].tolist()
    with pytest.raises(GraftError, match="cannot train FAISS"):
        build_index(ckpt, emb, data, tmp_path / "bad", IndexOptions(faiss="IVF64,PQ4"))


def test_cli_build_search_visualize(setup, tmp_path: Path) -> None:
    ckpt, _, data = setup
    idx, out = tmp_path / "idx", tmp_path / "res.json"
    res = runner.invoke(app, ["index", "build", str(ckpt), str(data), "--out", str(idx), "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "12 images" in res.output
    res = runner.invoke(app, ["index", "search", str(idx), str(data), "--top", "3", "--json", str(out),
                              "--visualize", "2", "--rerank", "--rerank-k1", "4", "--rerank-k2", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["rerank"] and len(doc["queries"]) == 5
    for q in doc["queries"]:
        assert [r["rank"] for r in q["results"]] == [1, 2, 3]
        dists = [r["distance"] for r in q["results"]]
        assert dists == sorted(dists) and q["id"] is not None
    from graft_edge.evaluation import query_gallery_distances
    from graft_edge.retrieval.metrics import RerankConfig

    query, gallery = embed_splits(load_embedder(ckpt), data, batch_size=4)
    ref = np.argsort(query_gallery_distances(query, gallery, RerankConfig(4, 2, 0.3)), axis=1, kind="stable")[:, :3]
    names = [str(s.sources[0].path.resolve()) for s in gallery.samples]
    assert [[r["path"] for r in q["results"]] for q in doc["queries"]] == [[names[j] for j in row] for row in ref]
    strips = sorted((idx / "ranked").glob("*.png"))
    assert len(strips) == 2
    assert Image.open(strips[0]).size == StripLayout.for_image(64, 32).size(3, 3) == (4 * 264 + 12, 3 * 136 + 14)


@pytest.mark.parametrize("args, needle", [
    (["index", "search", "nowhere", "."], "is not an index"),
    (["index", "build", "x.pt", ".", "--out", "i"], "x.pt does not exist"),
    (["index", "build", "MODEL", "nowhere", "--out", "i"], "nowhere is not a folder"),
    (["index", "build", "MODEL", "DATA", "--out", "i", "--faiss", "Bogus7"], "not a FAISS factory string"),
])
def test_bad_input_is_one_line(setup, tmp_path: Path, monkeypatch, args, needle) -> None:
    ckpt, _, data = setup
    monkeypatch.chdir(tmp_path)
    args = [str(ckpt) if a == "MODEL" else str(data) if a == "DATA" else a for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_loose_files_without_ids(setup, tmp_path: Path) -> None:
    """A folder of side-by-side images with arbitrary names: unknown ids (null in JSON), grey frames, still ranked."""
    ckpt, _, data = setup
    loose = tmp_path / "cam"
    loose.mkdir()
    for i, f in enumerate(sorted((data / "rgbir" / "bounding_box_test").iterdir())[:6]):
        shutil.copy(f, loose / f"frame{i}.jpg")
    (loose / "notes.txt").write_text("not an image")
    samples = find_images(loose, ("rgb", "nir"), "gallery")  # no metadata beside them: 6:1 aspect -> rgb|nir|tir
    assert len(samples) == 6 and all(s.pid == -1 and s.camid == -1 for s in samples)
    assert [src.slot for src in samples[0].sources] == [0, 1]
    out = tmp_path / "hits.json"
    assert runner.invoke(app, ["index", "build", str(ckpt), str(loose), "--out", str(tmp_path / "idx")]).exit_code == 0
    res = runner.invoke(app, ["index", "search", str(tmp_path / "idx"), str(loose), "--top", "2", "--json", str(out),
                              "--visualize", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert [q["results"][0]["path"] for q in doc["queries"]] == [q["path"] for q in doc["queries"]]  # itself first
    assert all(q["id"] is None and q["results"][0]["id"] is None for q in doc["queries"])
    strip = np.asarray(Image.open(next((tmp_path / "idx" / "ranked").glob("*.png"))).convert("RGB"))
    layout = StripLayout.for_image(64, 32)
    assert tuple(strip[layout.caption + 1, layout.cell[0] + 2 * layout.border + layout.gap + 1]) == (128, 128, 128)
