"""One dynamic batch of serving requests -> one answer per request (serve.batching), without a server."""
from __future__ import annotations

import io

import numpy as np
import pytest
from _export_fixtures import make_checkpoint
from PIL import Image

from graft_edge.errors import GraftError
from graft_edge.runtime import load_embedder
from graft_edge.serve.batching import RequestAssembler, embed_requests, input_specs
from graft_edge.serve.images import ImagePreprocessor

MODS = ("rgb", "nir", "tir")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return load_embedder(make_checkpoint(tmp_path_factory.mktemp("batching") / "tiny.pt", MODS))


def png(seed: int, width: int = 3 * 70) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(40, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def good_request(seed: int) -> dict[str, np.ndarray]:
    """Seeds alternate the input forms: all tensors, a side-by-side PNG, tensors of two modalities."""
    rng = np.random.default_rng(seed)
    if seed % 3 == 0:
        return {m: rng.standard_normal((1, 3, 32, 64), dtype=np.float32) for m in MODS}
    if seed % 3 == 1:
        return {"image": np.array([[png(seed)]], dtype=object)}
    return {m: rng.standard_normal((1, 3, 32, 64), dtype=np.float32) for m in ("rgb", "tir")}


def offline(embedder, request: dict[str, np.ndarray]) -> np.ndarray:
    """The request's embedding from the runtime alone (batch 1, decoded with the artefact's preprocessing)."""
    if "image" in request:
        decoded = ImagePreprocessor(embedder.info).side_by_side(request["image"][0, 0])
        return embedder.embed({m: x[None] for m, x in decoded.items()})
    return embedder.embed(dict(request))


BAD = {
    "no input": ({"present": np.ones((1, 3), np.float32)}, "request has no input"),
    "mixed forms": ({"rgb": np.zeros((1, 3, 32, 64), np.float32), "image": np.array([[b"x"]], dtype=object)},
                    "mixes input forms"),
    "undecodable bytes": ({"image": np.array([[b"not an image"]], dtype=object)},
                          "input 'image' does not decode as an image"),
    "empty mask row": ({"rgb": np.zeros((1, 3, 32, 64), np.float32), "present": np.zeros((1, 3), np.float32)},
                       "has no modality present"),
    "mask of other values": ({"rgb": np.zeros((1, 3, 32, 64), np.float32), "present": np.full((1, 3), 2, np.float32)},
                             "holds values other than 0 and 1"),
    "wrong size": ({m: np.zeros((1, 3, 16, 16), np.float32) for m in MODS}, "expected (B, 3, 32, 64)"),
    "non-finite values": ({m: np.full((1, 3, 32, 64), np.nan, np.float32) for m in MODS},
                          "input 'rgb' holds NaN or infinite values"),
    "empty bytes": ({"image": np.array([[b""]], dtype=object)}, "input 'image' is empty"),
    "slots that do not split": ({"image": np.array([[png(0, width=100)]], dtype=object)},
                                "does not split into 3 equal slots"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_request_gets_its_own_error_and_its_batch_mates_their_embeddings(embedder, kind):
    bad, message = BAD[kind]
    goods = [good_request(seed) for seed in range(12)]
    requests = goods[:5] + [bad] + goods[5:]
    answers = embed_requests(embedder, RequestAssembler(embedder.info), requests)
    assert len(answers) == 13 and isinstance(answers[5], GraftError) and message in str(answers[5])
    for request, answer in zip(goods, answers[:5] + answers[6:]):
        want = offline(embedder, request)
        assert isinstance(answer, np.ndarray) and answer.shape == (1, embedder.info.embed_dim)
        assert float(np.sum(answer * want) / np.linalg.norm(answer) / np.linalg.norm(want)) >= 0.9999


def test_requests_of_several_samples_keep_their_rows_and_masks(embedder):
    rng = np.random.default_rng(7)
    x = {m: rng.standard_normal((3, 3, 32, 64), dtype=np.float32) for m in MODS}
    mask = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], np.float32)
    only_rgb = {"rgb": rng.standard_normal((2, 3, 32, 64), dtype=np.float32)}
    answers = embed_requests(embedder, RequestAssembler(embedder.info), [{**x, "present": mask}, only_rgb])
    assert answers[0].shape == (3, embedder.info.embed_dim) and answers[1].shape == (2, embedder.info.embed_dim)
    for row, on in enumerate(mask):
        want = embedder.embed({m: x[m][row:row + 1] for m, flag in zip(MODS, on) if flag})
        assert np.abs(answers[0][row] - want[0]).max() <= 1e-5
    assert np.abs(answers[1] - embedder.embed(only_rgb)).max() <= 1e-5


def test_input_specs_name_every_form(embedder):
    specs = {name: (dtype, dims) for name, dtype, dims in input_specs(embedder.info)}
    assert specs["rgb"] == ("FP32", (3, 32, 64)) and specs["image"] == ("BYTES", (1,))
    assert specs["tir_image"] == ("BYTES", (1,)) and specs["present"] == ("FP32", (3,))
    assert len(specs) == 2 * len(MODS) + 2
