"""Shared fixtures: tiny model configs and checkpoints; hardware markers that skip only without the hardware."""
from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from graft_edge.config import GraftConfig, get_preset

torch.set_num_threads(min(2, torch.get_num_threads()))


def has_cuda() -> bool:
    """True when an NVIDIA GPU is usable by PyTorch."""
    return torch.cuda.is_available()


def has_tensorrt() -> bool:
    """True when the tensorrt package imports and a GPU is present."""
    return has_cuda() and importlib.util.find_spec("tensorrt") is not None


# 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX-INT8; Arm's dot product). Without one, ONNX Runtime's
# x86 INT8 kernels add pairs of u8 x s8 products in saturating 16-bit lanes (vpmaddubsw): full-range activations
# (reduce_range=False) can saturate there, so INT8 is less exact than on the machines the strict floors came from.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def has_int8_dot() -> bool:
    """True when this CPU has an 8-bit dot-product instruction (graft_edge.cpu reads the flags)."""
    from graft_edge.cpu import cpu_flags

    return any(flag in cpu_flags() for flag in INT8_DOT_FLAGS)


def int8_min_cosine(strict: float = 0.999) -> float:
    """An INT8 cosine floor: `strict` on CPUs with an 8-bit dot product, else the export's own INT8 floor."""
    from graft_edge.export.options import DEFAULT_MIN_COSINE_INT8

    return strict if has_int8_dot() else DEFAULT_MIN_COSINE_INT8


def int8_embedding_tolerance(strict: float) -> float:
    """An INT8 budget on an embedding's change (L2, or any one element): `strict` with an 8-bit dot product, else what
    the export's floor allows: unit vectors with cosine c are sqrt(2 - 2c) apart."""
    return strict if has_int8_dot() else math.sqrt(2 - 2 * int8_min_cosine())


def int8_distance_tolerance(strict: float) -> float:
    """An INT8 budget per query-gallery distance: `strict` with an 8-bit dot product, else twice the embedding budget
    (the query and the gallery embedding both move)."""
    return strict if has_int8_dot() else 2 * int8_embedding_tolerance(strict)


# Test modules that run OpenVINO / NNCF in the pytest process. In the full suite (about 500 earlier tests in the
# same process) a later in-process `train` crashed with SIGSEGV after them (not reproduced in smaller sets; the
# root cause is not found yet): they run last, after every test that trains.
RUN_LAST = ("test_openvino.py", "test_roofline.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run OpenVINO's modules last; skip `gpu` tests without an NVIDIA GPU and `trt` tests without TensorRT + GPU."""
    items.sort(key=lambda item: item.path.name in RUN_LAST)  # stable: the order within each group is kept
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (none visible to PyTorch)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (pip install graft-edge[trt]) and an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda():
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not has_tensorrt():
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def no_peak_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench and frontier measure GEMM peaks on first use, with OpenVINO among their runtimes: off in tests (it would
    load OpenVINO before the training tests; see RUN_LAST), except where a test turns it on (test_roofline.py)."""
    monkeypatch.setenv("GRAFT_EDGE_PEAKS", "off")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared 2-core box two spinning threads are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_cfg() -> GraftConfig:
    """The synthetic preset (tiny ViT, 32x64 images, 3 modalities)."""
    return get_preset("synthetic")


def tiny_config(modalities: tuple[str, ...] = ("rgb", "nir", "tir"), **model_changes) -> GraftConfig:
    """A synthetic-preset config with the given modalities / model field changes."""
    cfg = get_preset("synthetic")
    return replace(cfg, model=replace(cfg.model, modalities=modalities, **model_changes))


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A saved untrained synthetic-preset checkpoint."""
    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.model import build_model

    torch.manual_seed(0)
    cfg = get_preset("synthetic")
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, build_model(cfg.model), cfg)
    return path


def tiny_train_config(**train_changes) -> GraftConfig:
    """Synthetic preset shrunk to seconds: 1-block ViT at 16x32, batches of 2 ids x 2 images, no validation split."""
    cfg = get_preset("synthetic")
    model = replace(cfg.model, backbone_args={**cfg.model.backbone_args, "depth": 1, "embed_dim": 32, "num_heads": 2},
                    img_size=(16, 32), enc_heads=2, enc_ff=32)
    data = replace(cfg.data, ids_per_batch=2, instances_per_id=2, eval_batch_size=16, val_fraction=0.0)
    s1 = replace(cfg.train.stage1, epochs=2, warmup_steps=2)
    s2 = replace(cfg.train.stage2, epochs=1)
    train = replace(cfg.train, stage1=s1, stage2=s2, eval_every=1, **train_changes)
    return replace(cfg, model=model, data=data, train=train)


@pytest.fixture
def tiny_checkpoint_4ids(tmp_path: Path) -> Path:
    """tiny_train_config's model with a 4-id classifier (the 8-id tiny data sets have 4 training ids)."""
    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.model import build_model

    torch.manual_seed(0)
    cfg = tiny_train_config()
    cfg = replace(cfg, model=replace(cfg.model, num_ids=4))
    path = tmp_path / "tiny4.pt"
    save_checkpoint(path, build_model(cfg.model), cfg)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 ids (4 train x 4 images -> 4 batches/epoch at 2 x 2), 2 cameras, 16x32 slots; one copy per test module."""
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data") / "syn"
    write_synthetic(root, ids=8, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_val_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """16 ids (6 training + 2 validation ids at val_fraction 0.25) and an untrained 6-id tiny model: (ckpt, data)."""
    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.data.synthetic import write_synthetic
    from graft_edge.model import build_model

    root = tmp_path_factory.mktemp("val-inputs")
    write_synthetic(root / "data", ids=16, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    cfg = tiny_train_config()
    cfg = replace(cfg, data=replace(cfg.data, val_fraction=0.25), model=replace(cfg.model, num_ids=6))
    torch.manual_seed(0)
    save_checkpoint(root / "dense.pt", build_model(cfg.model), cfg)
    return root / "dense.pt", root / "data"
