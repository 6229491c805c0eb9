"""Device-resident timing (`bind`), fp16 on CUDA and ONNX Runtime's CUDA provider.

The CPU half runs everywhere: `bind` gives the same embeddings as `embed` (PyTorch and ONNX Runtime IO binding,
with a modality subset through the presence mask), the timing loop repeats the bound call and never `embed`,
and the one-line refusals for --dtype fp16 on a CPU and --device cuda without a CUDA provider. The half marked
`gpu` needs an NVIDIA GPU and onnxruntime-gpu (`pip install 'graft-edge[gpu]'`), and is skipped without them.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from _export_fixtures import tiny_checkpoint_factory  # noqa: F401  (fixture)
from typer.testing import CliRunner

from graft_edge.checkpoint import load_model
from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.export.pipeline import ExportOptions, export_model
from graft_edge.inputs import random_images
from graft_edge.model.embedder import ModelEmbedder, check_dtype
from graft_edge.profile.latency import time_embedder
from graft_edge.runtime import load_embedder
from graft_edge.runtime.onnx_backend import cuda_index, providers_for

MODS = ("rgb", "nir", "tir")
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint_factory):  # noqa: F811
    """A tiny checkpoint with its FP32 and FP16 ONNX."""
    ckpt = tiny_checkpoint_factory(MODS)
    out = tmp_path_factory.mktemp("cuda-export")
    export_model(ckpt, out, ExportOptions(formats=("onnx", "fp16")), log=lambda _: None)
    return ckpt, out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_torch_bind_matches_embed(exported) -> None:
    ckpt, _ = exported
    emb = ModelEmbedder(load_model(ckpt)[0].eval())
    batch = random_images(MODS, emb.info.img_size, 3, seed=1)
    out = emb.bind(batch)()
    assert isinstance(out, torch.Tensor) and out.device == emb.device  # left where the model runs
    np.testing.assert_allclose(out.float().numpy(), emb.embed(batch), atol=1e-6)


@pytest.mark.parametrize("modalities", [MODS, ("nir",)], ids=["all", "nir-only"])
def test_onnx_io_binding_matches_embed(exported, modalities) -> None:
    _, out = exported
    emb = load_embedder(out / "model.onnx")
    batch = random_images(modalities, emb.info.img_size, 2, seed=2)
    value = emb.bind(batch)()
    assert isinstance(value, ort.OrtValue) and value.device_name().lower() == "cpu"
    np.testing.assert_allclose(value.numpy(), emb.embed(batch), atol=1e-6)


def test_timing_repeats_the_bound_call_not_embed() -> None:
    class Counting:
        info = None

        def __init__(self) -> None:
            self.binds, self.runs, self.embeds = 0, 0, 0

        def bind(self, batch):
            self.binds += 1

            def run():
                self.runs += 1
            return run

        def embed(self, batch):
            self.embeds += 1

    emb = Counting()
    times = time_embedder(emb, {"rgb": np.zeros((1, 3, 4, 4), np.float32)}, warmup=2, iters=5)
    assert len(times) == 5 and (emb.binds, emb.runs, emb.embeds) == (1, 7, 0)


def test_fp16_needs_cuda_and_unknown_dtype_is_named() -> None:
    with pytest.raises(GraftError, match="fp16 runs on CUDA GPUs only"):
        check_dtype("fp16", torch.device("cpu"))
    with pytest.raises(GraftError, match="'int4'"):
        check_dtype("int4", torch.device("cpu"))


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_cli_fp16_on_cpu_is_one_line(exported, command, tmp_path) -> None:
    ckpt, _ = exported
    args = [command, str(ckpt), "--dtype", "fp16"]
    args += ["--data", str(tmp_path)] if command == "eval" else ["--iters", "1", "--warmup", "0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "fp16 runs on CUDA GPUs only" in res.output and "Traceback" not in res.output


def test_cuda_index_and_bad_device() -> None:
    assert cuda_index("cuda") == 0 and cuda_index("cuda:3") == 3
    with pytest.raises(GraftError, match="cuda:x"):
        cuda_index("cuda:x")
    with pytest.raises(GraftError, match="expected cpu or cuda"):
        providers_for("tpu")


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has a CUDA provider")
def test_onnx_on_cuda_without_provider_is_one_line(exported) -> None:
    _, out = exported
    res = CliRunner().invoke(app, ["bench", str(out / "model.onnx"), "--device", "cuda", "--iters", "1"])
    assert res.exit_code == 1, res.output  # bench: a model that cannot run is a failed row (the others still run)
    assert "no CUDA provider" in res.output and "graft-edge[gpu]" in res.output and "Traceback" not in res.output


# --- on an NVIDIA GPU with onnxruntime-gpu ---------------------------------------------------------------------------

needs_cuda_ep = pytest.mark.skipif(not HAS_CUDA_EP, reason="onnxruntime-gpu (CUDA provider) is not installed")


@pytest.mark.gpu
@needs_cuda_ep
@pytest.mark.parametrize("name, min_cosine", [("model.onnx", 0.99999), ("model.fp16.onnx", 0.999)])
def test_onnx_cuda_provider_matches_cpu(exported, name, min_cosine) -> None:
    ckpt, out = exported
    ref = ModelEmbedder(load_model(ckpt)[0].eval())
    emb = load_embedder(out / name, device="cuda")
    assert emb.info.extra["providers"][0] == "CUDAExecutionProvider"
    batch = random_images(MODS, ref.info.img_size, 4, seed=3)
    assert _cosine(emb.embed(batch), ref.embed(batch)).min() >= min_cosine
    value = emb.bind(batch)()
    assert value.device_name().lower() == "cuda"  # IO binding leaves the output on the GPU
    np.testing.assert_allclose(value.numpy(), emb.embed(batch), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_torch_half_precision_on_cuda(exported, dtype) -> None:
    ckpt, _ = exported
    model = load_model(ckpt)[0].eval()
    ref = ModelEmbedder(model)
    batch = random_images(MODS, ref.info.img_size, 4, seed=4)
    want = ref.embed(batch)
    emb = ModelEmbedder(model.to("cuda"), dtype=dtype)
    assert emb.info.extra["precision"] == dtype
    assert _cosine(emb.embed(batch), want).min() >= 0.999
    assert emb.bind(batch)().device.type == "cuda"


def _summary_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "gpu_summary", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_summary_pruning_sentence_uses_the_fastest_of_each_size() -> None:
    mod = _summary_module()
    rows = [
        {"model": "dense.pt", "params": 100_000_000, "runtime": "PyTorch CUDA fp16", "batch": 1, "ms": 4.0, "util": 30},
        {"model": "model.fp16.onnx", "params": 100_000_000, "runtime": "ORT CUDA fp16", "batch": 1, "ms": 3.0,
         "util": 40},
        {"model": "s60M.pt", "params": 60_000_000, "runtime": "PyTorch CUDA fp16", "batch": 1, "ms": 2.5, "util": 20},
        {"model": "s46M.pt", "params": 46_000_000, "runtime": "PyTorch CUDA fp16", "batch": 1, "ms": 3.0, "util": 15},
        {"model": "dense.pt", "params": 100_000_000, "runtime": "PyTorch CUDA fp16", "batch": 32, "ms": 40.0,
         "util": 95},
        {"model": "s46M.pt", "params": 46_000_000, "runtime": "PyTorch CUDA fp16", "batch": 32, "ms": 20.0, "util": 90},
    ]
    text = mod.pruning_sentence(rows)
    assert "at batch 1" in text and "60M 1.20x (2.50 vs 3.00 ms" in text and "46M 1.00x" in text
    assert "at batch 32" in text and "46M 2.00x (20.00 vs 40.00 ms" in text and "utilisation 95%" in text


def test_subset_embedder_binds_through_to_its_runtime(exported) -> None:
    _, out = exported
    full = load_embedder(out / "model.onnx")
    sub = load_embedder(out / "model.onnx", modalities="rgb,tir")
    batch = random_images(MODS, full.info.img_size, 2, seed=5)  # nir is dropped by the subset
    value = sub.bind(batch)()
    assert isinstance(value, ort.OrtValue)
    np.testing.assert_allclose(value.numpy(), full.embed({m: batch[m] for m in ("rgb", "tir")}), atol=1e-6)
