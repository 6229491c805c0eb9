"""The gallery index as a folder being written: a lock, staged parts a rerun re-plans or drops, options and
output paths checked before any work, damaged files named in one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _export_fixtures import make_checkpoint, write_dataset
from typer.testing import CliRunner

from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.outdir import OutputLock
from graft_edge.retrieval.images import find_images
from graft_edge.retrieval.index import IndexOptions, add_to_index, build_index, embed_samples, search_index
from graft_edge.retrieval.store import load_entries, open_index, read_manifest
from graft_edge.runtime import load_embedder

runner = CliRunner()
MODS = ("rgb", "nir", "tir")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint, a dataset (12 gallery / 5 query images) and a finished index of its gallery."""
    base = tmp_path_factory.mktemp("index-rel")
    ckpt = make_checkpoint(base / "a.pt", MODS, seed=0)
    data = write_dataset(base / "ds", MODS, n_train=4, n_gallery=12, n_query=5)
    build_index(ckpt, load_embedder(ckpt), data, base / "idx", IndexOptions(batch_size=4))
    return ckpt, data, base / "idx"


class CountingEmbedder:
    """Wraps an embedder and counts the images it embeds."""

    def __init__(self, inner) -> None:
        self.inner, self.info, self.images = inner, inner.info, 0

    def embed(self, batch):
        out = self.inner.embed(batch)
        self.images += len(out)
        return out


def _copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _folder(data: Path, dst: Path, first: int, n: int) -> Path:
    """n gallery files of `data` (from the first-th) copied into a new folder `dst`."""
    dst.mkdir(parents=True)
    for f in sorted((data / "rgbir" / "bounding_box_test").iterdir())[first:first + n]:
        shutil.copy(f, dst / f.name)
    return dst


def _one_line(res) -> bool:
    return "Traceback" not in res.output and "internal error" not in res.output and len(res.output.strip().splitlines()) == 1


# ------------------------------------------------------------------ a failed add is re-planned or dropped

@pytest.mark.parametrize("next_step", ["fix-and-rerun", "add-another-folder"])
def test_failed_add_does_not_wedge_the_index(setup, tmp_path: Path, next_step: str) -> None:
    ckpt, data, built = setup
    idx = _copy_index(built, tmp_path / "idx")
    odd = _folder(data, tmp_path / "odd", 0, 5)
    (odd / "zz_empty.jpg").write_bytes(b"")  # sorts last: batches [0,1] [2,3] [4,zz]
    emb = load_embedder(ckpt)
    with pytest.raises(GraftError, match="zz_empty.jpg"):
        add_to_index(ckpt, emb, odd, idx, batch_size=2)
    assert read_manifest(idx)["count"] == 12
    counter, notes = CountingEmbedder(emb), []
    if next_step == "fix-and-rerun":
        (odd / "zz_empty.jpg").unlink()
        manifest, added = add_to_index(ckpt, counter, odd, idx, batch_size=2, log=notes.append)
        assert added == 5 and counter.images == 1  # the two batches finished before the failure are kept
        names = {(odd / f).resolve() for f in os.listdir(odd)}
    else:
        other = _folder(data, tmp_path / "other", 5, 3)
        manifest, added = add_to_index(ckpt, counter, other, idx, batch_size=2, log=notes.append)
        assert added == 3 and counter.images == 3 and "dropped the unfinished part from" in notes[0]
        names = {(other / f).resolve() for f in os.listdir(other)}
    assert manifest["count"] == manifest["faiss_count"] == 12 + added and open_index(idx).faiss.ntotal == 12 + added
    assert {s.sources[0].path for s in load_entries(idx, manifest)[12:]} == names
    assert [p["complete"] for p in read_manifest(idx)["parts"]] == [True, True]


def test_rerun_of_an_unfinished_build_replans_from_the_images_as_they_are(setup, tmp_path: Path) -> None:
    ckpt, data, _ = setup
    src = _folder(data, tmp_path / "cam", 0, 5)
    (src / "zz_empty.jpg").write_bytes(b"")  # batches [0,1,2] [3,4,zz]
    with pytest.raises(GraftError, match="zz_empty.jpg"):
        build_index(ckpt, load_embedder(ckpt), src, tmp_path / "idx", IndexOptions(batch_size=3))
    (src / "zz_empty.jpg").unlink()
    counter = CountingEmbedder(load_embedder(ckpt))
    manifest = build_index(ckpt, counter, src, tmp_path / "idx", IndexOptions(batch_size=3))
    assert manifest["count"] == 5 and counter.images == 2 and manifest["parts"][0]["resumed"] == 3


# ------------------------------------------------------------------ --faiss is checked before any work

@pytest.mark.parametrize("spec, needle", [
    ("IVF1024,Bogus", "not a FAISS factory string"),
    ("IVF1024,Flat", "needs at least 1024"),
    ("IVF4,PQ4", "needs at least 256"),
    ("PCA64,Flat", "needs at least 64"),
])
def test_bad_faiss_is_refused_before_anything_is_embedded_or_saved(setup, tmp_path: Path, spec: str,
                                                                   needle: str) -> None:
    ckpt, data, _ = setup
    counter = CountingEmbedder(load_embedder(ckpt))
    with pytest.raises(GraftError, match=needle):
        build_index(ckpt, counter, data, tmp_path / "idx", IndexOptions(faiss=spec))
    assert counter.images == 0 and not (tmp_path / "idx").exists()
    res = runner.invoke(app, ["index", "build", str(ckpt), str(data), "--out", str(tmp_path / "idx"), "--faiss", spec])
    assert res.exit_code == 2 and needle in res.output and _one_line(res), res.output
    assert not (tmp_path / "idx").exists()
    res = runner.invoke(app, ["index", "build", str(ckpt), str(data), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0 and "12 images" in res.output and "FAISS Flat" in res.output, res.output


def test_unfinished_build_takes_the_rerun_faiss_and_keeps_its_embeddings(setup, tmp_path: Path) -> None:
    ckpt, data, _ = setup
    emb = load_embedder(ckpt)

    def stop_after_8(n: int, seen=[0]) -> None:  # noqa: B006 - a counter across calls
        seen[0] += n
        if seen[0] >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(ckpt, emb, data, tmp_path / "idx", IndexOptions(faiss="IVF2,Flat", batch_size=4),
                    progress=stop_after_8)
    assert read_manifest(tmp_path / "idx")["faiss"] == "IVF2,Flat"
    counter = CountingEmbedder(emb)
    manifest = build_index(ckpt, counter, data, tmp_path / "idx", IndexOptions(faiss="Flat", batch_size=4))
    assert manifest["faiss"] == "Flat" and manifest["count"] == 12 and counter.images == 4
    assert "IVF" not in type(open_index(tmp_path / "idx").faiss).__name__
    with pytest.raises(GraftError, match="was built with --faiss Flat, not IVF2,Flat"):
        build_index(ckpt, emb, data, tmp_path / "idx", IndexOptions(faiss="IVF2,Flat"))


# ------------------------------------------------------------------ one writer at a time

_WORKER = r"""
import json, sys, time
from pathlib import Path
from typer.testing import CliRunner
from graft_edge.cli.main import app

me, rounds, base = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
runner = CliRunner()
for r in range(rounds):
    (base / f"ready-{r}-{me}").touch()
    while not (base / f"ready-{r}-{1 - me}").exists():  # a barrier: both adds start together
        time.sleep(0.001)
    res = runner.invoke(app, ["index", "add", str(base / f"idx{r}"), str(base / f"new{me}"), "--batch-size", "2",
                              "--threads", "1"])
    (base / f"result-{r}-{me}.json").write_text(json.dumps({"rc": res.exit_code, "out": res.output}))
"""


@pytest.mark.slow
def test_two_adds_started_together_never_lose_images(setup, tmp_path: Path) -> None:
    ckpt, data, built = setup
    rounds = 4
    for r in range(rounds):
        _copy_index(built, tmp_path / f"idx{r}")
    folders = [_folder(data, tmp_path / f"new{i}", 0, 6) for i in (0, 1)]  # other paths: all 12 images are new
    (tmp_path / "worker.py").write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(i), str(rounds), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    for r in range(rounds):
        results = [json.loads((tmp_path / f"result-{r}-{i}.json").read_text()) for i in (0, 1)]
        won = [i for i in (0, 1) if results[i]["rc"] == 0]
        for i in (0, 1):
            line = " ".join(results[i]["out"].split())
            assert results[i]["rc"] == 0 or (results[i]["rc"] == 2 and "in use by another index add (PID" in line), line
        manifest = read_manifest(tmp_path / f"idx{r}")
        assert manifest["count"] == manifest["faiss_count"] == 12 + 6 * len(won), (r, results)
        indexed = {s.sources[0].path for s in load_entries(tmp_path / f"idx{r}", manifest)}
        for i in won:
            assert {(folders[i] / f).resolve() for f in os.listdir(folders[i])} <= indexed
            assert "added 6 images" in results[i]["out"], results[i]["out"]
        assert open_index(tmp_path / f"idx{r}").faiss.ntotal == manifest["count"]


def test_add_into_a_locked_index_fails_naming_the_holder(setup, tmp_path: Path) -> None:
    ckpt, data, built = setup
    idx = _copy_index(built, tmp_path / "idx")
    new = _folder(data, tmp_path / "new", 0, 2)
    with OutputLock(idx, "index build"):
        res = runner.invoke(app, ["index", "add", str(idx), str(new)])
    assert res.exit_code == 2 and f"(PID {os.getpid()})" in " ".join(res.output.split()), res.output
    assert read_manifest(idx)["count"] == 12
    res = runner.invoke(app, ["index", "add", str(idx), str(new)])
    assert res.exit_code == 0 and "added 2 images, 14 in all" in res.output, res.output


# ------------------------------------------------------------------ damaged files: one line naming the file

def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _drop_parts(path: Path) -> None:
    doc = json.loads(path.read_text())
    del doc["parts"]
    path.write_text(json.dumps(doc))


DAMAGE = {
    "truncated plan": ("part-000/plan.json", _truncate),
    "manifest without parts": ("index.json", _drop_parts),
    "truncated embeddings": ("part-000/embeddings.npy", _truncate),
    "truncated faiss": ("faiss.index", _truncate),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["search", "search --rerank", "add"])
def test_damaged_index_file_is_one_line_naming_it(setup, tmp_path: Path, damage: str, command: str) -> None:
    ckpt, data, built = setup
    idx = _copy_index(built, tmp_path / "idx")
    name, spoil = DAMAGE[damage]
    spoil(idx / name)
    verb, *extra = command.split()
    args = [str(tmp_path / "new")] if verb == "add" else [str(data), *extra]
    _folder(data, tmp_path / "new", 0, 2)
    res = runner.invoke(app, ["index", verb, str(idx), *args])
    if verb == "add" and damage == "truncated faiss":  # a writer rebuilds FAISS from the stored embeddings
        assert res.exit_code == 0 and "added 2 images, 14 in all" in res.output, res.output
        assert open_index(idx).faiss.ntotal == 14
        return
    assert res.exit_code == 2 and _one_line(res), res.output
    assert str(idx / name) in " ".join(res.output.split()), res.output


def test_build_rerun_rebuilds_a_damaged_faiss_file(setup, tmp_path: Path) -> None:
    ckpt, data, built = setup
    idx = _copy_index(built, tmp_path / "idx")
    emb = load_embedder(ckpt)
    q = embed_samples(emb, find_images(data, MODS, "query"))
    before = search_index(open_index(idx), q, 5)
    _truncate(idx / "faiss.index")
    res = runner.invoke(app, ["index", "build", str(ckpt), str(data), "--out", str(idx)])
    assert res.exit_code == 0, res.output
    after = search_index(open_index(idx), q, 5)
    assert after.indices.tolist() == before.indices.tolist()
    np.testing.assert_allclose(after.distances, before.distances, atol=1e-5)


# ------------------------------------------------------------------ output paths are checked before any work

@pytest.mark.parametrize("option", ["--visualize-dir", "--json"])
def test_search_output_paths_are_checked_before_embedding(setup, tmp_path: Path, monkeypatch, option: str) -> None:
    ckpt, data, built = setup
    import graft_edge.cli.index as cli_index

    def no_work(*args, **kwargs):
        raise AssertionError("queries embedded before the output paths were checked")

    monkeypatch.setattr(cli_index, "embed_samples", no_work)
    target = tmp_path / "f.txt" if option == "--visualize-dir" else tmp_path / "folder"
    target.write_text("x") if option == "--visualize-dir" else target.mkdir()
    res = runner.invoke(app, ["index", "search", str(built), str(data), "--visualize", "1", option, str(target)])
    assert res.exit_code == 2 and option in res.output and _one_line(res), res.output


def test_build_out_that_is_a_file_is_one_line(setup, tmp_path: Path) -> None:
    ckpt, data, _ = setup
    (tmp_path / "f").write_text("x")
    res = runner.invoke(app, ["index", "build", str(ckpt), str(data), "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "is a file" in res.output and _one_line(res), res.output
    assert (tmp_path / "f").read_text() == "x"
