"""TensorRT export logic without a GPU: batch ranges, version dispatch, engine building against a fake
`tensorrt` module; and real-engine tests marked trt/gpu that skip without TensorRT + an NVIDIA GPU."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from _export_fixtures import tiny_checkpoint_factory  # noqa: F401  (fixture)

from graft_edge.artefact.record import BatchRange
from graft_edge.compress import previous_methods
from graft_edge.errors import GraftError
from graft_edge.export import tensorrt as T
from graft_edge.runtime import tensorrt_backend as TB


def _has_trt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return TB.nvidia_gpu_available()


needs_trt = pytest.mark.skipif(not _has_trt(), reason="needs the tensorrt package and an NVIDIA GPU")


# ------------------------------------------------------------------ --batch


@pytest.mark.parametrize("text, expected", [("1:8:64", (1, 8, 64)), ("4", (4, 4, 4)), (" 2 : 2 : 16 ", (2, 2, 16)),
                                            ("1:1:4096", (1, 1, 4096))])
def test_parse_batch_range(text, expected):
    r = T.parse_batch_range(text)
    assert (r.min, r.opt, r.max) == expected
    assert str(r) == ":".join(map(str, expected))


@pytest.mark.parametrize("text, fragment", [("8:4:16", "MIN <= OPT <= MAX"), ("0:1:4", "start at 1"), ("a:b:c", "MIN:OPT:MAX"),
                                            ("1:2", "MIN:OPT:MAX"), ("1:2:3:4", "MIN:OPT:MAX"), ("-1:2:3", "MIN:OPT:MAX"),
                                            ("1:1:5000", "at most 4096"), ("", "MIN:OPT:MAX")])
def test_parse_batch_range_errors(text, fragment):
    with pytest.raises(GraftError, match="--batch") as exc:
        T.parse_batch_range(text)
    assert fragment in str(exc.value)


def test_profile_shapes():
    shapes = T.profile_shapes(BatchRange(1, 8, 32), {"rgb": (3, 224, 224), "nir": (3, 224, 224)})
    assert shapes["rgb"] == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert set(shapes) == {"rgb", "nir"}


# ------------------------------------------------------------------ version dispatch


def test_plan_tensorrt10_uses_builder_flags():
    fp16 = T.trt_plan(10, "fp16")
    assert not fp16.strongly_typed and fp16.onnx_variant == "onnx"
    assert "FP16" in fp16.builder_flags and fp16.pin_fp32_layers
    int8 = T.trt_plan(10, "int8")
    assert int8.onnx_variant == "int8-static" and {"INT8", "FP16"} <= set(int8.builder_flags)
    fp32 = T.trt_plan(10, "fp32")
    assert fp32.builder_flags == () and fp32.cleared_flags == ("TF32",) and not fp32.pin_fp32_layers


@pytest.mark.parametrize("major", [11, 12])
def test_plan_tensorrt11_is_strongly_typed(major):
    for precision, variant in (("fp32", "onnx"), ("fp16", "fp16"), ("int8", "int8-static")):
        plan = T.trt_plan(major, precision)
        assert plan.strongly_typed and plan.onnx_variant == variant
        assert not {"FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS"} & set(plan.builder_flags)
        assert plan.network_flags == ()  # EXPLICIT_BATCH is gone, STRONGLY_TYPED is implied


def test_plan_sparse_and_errors():
    assert "SPARSE_WEIGHTS" in T.trt_plan(10, "fp16", sparse=True).builder_flags
    assert "SPARSE_WEIGHTS" in T.trt_plan(11, "fp32", sparse=True).builder_flags
    with pytest.raises(GraftError, match="TensorRT 8.x is too old"):
        T.trt_plan(8, "fp32")
    with pytest.raises(GraftError, match="precision 'bf16'"):
        T.trt_plan(10, "bf16")
    assert T.trt_major("10.3.0.26") == 10 and T.trt_major("11.0.1") == 11


def test_two_four_history():
    """Export turns on TensorRT's SPARSE_WEIGHTS when the checkpoint's history says 2:4 (compress's own record)."""
    assert "2:4" in previous_methods([{"method": "2:4", "step": 1}])
    assert "2:4" not in previous_methods([{"method": "structured", "target": 60_000_000}])
    assert "2:4" not in previous_methods([])


# ------------------------------------------------------------------ build_engine against a fake tensorrt


class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


def _fake_tensorrt(version: str, rec: _Recorder, inputs=(("rgb", (-1, 3, 32, 64)),)) -> types.ModuleType:
    """Just enough of the tensorrt module for build_engine; TensorRT 11 has no FP16/INT8 flags at all."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    flags = ["TF32", "SPARSE_WEIGHTS"] + (["FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"] if major < 11 else [])
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.LayerType = types.SimpleNamespace(NORMALIZATION="NORM", SOFTMAX="SOFTMAX", REDUCE="REDUCE", MATRIX_MULTIPLY="MM")
    trt.float32 = "float32"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Layer:
        def __init__(self, kind):
            self.type, self.precision, self.num_outputs, self.outputs = kind, None, 1, {}

        def set_output_type(self, i, dtype):
            self.outputs[i] = dtype

    class Network:
        def __init__(self):
            self.layers = [Layer("MM"), Layer("NORM"), Layer("SOFTMAX"), Layer("MM")]
            self.inputs = [Tensor(n, s) for n, s in inputs]
            self.num_layers, self.num_inputs = len(self.layers), len(self.inputs)

        def get_layer(self, i):
            return self.layers[i]

        def get_input(self, i):
            return self.inputs[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))
            rec.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("pool", pool, size))

        def set_flag(self, flag):
            rec.calls.append(("set_flag", flag))

        def clear_flag(self, flag):
            rec.calls.append(("clear_flag", flag))

        def add_optimization_profile(self, profile):
            rec.calls.append(("profile", profile.shapes))

        def create_timing_cache(self, data):
            rec.calls.append(("timing_cache_in", bytes(data)))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.network = None

        def create_network(self, flags):
            rec.calls.append(("create_network", flags))
            self.network = Network()
            rec.network = self.network
            return self.network

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE-" + version.encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            rec.calls.append(("parse", Path(path).name))
            return Path(path).exists()

        def get_error(self, i):
            return "bad"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version):
        rec = _Recorder()
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version, rec))
        monkeypatch.setattr(TB, "nvidia_gpu_available", lambda: True)
        return rec
    return install


def test_build_engine_tensorrt10_fp16(fake_trt, tmp_path):
    rec = fake_trt("10.3.0")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    facts = T.build_engine(onnx, tmp_path / "model.trt-fp16.engine", "fp16", batch="1:4:16", workspace_mb=512,
                           timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "model.trt-fp16.engine").read_bytes() == b"ENGINE-10.3.0"
    assert ("set_flag", "FP16") in rec.calls and ("pool", "WORKSPACE", 512 << 20) in rec.calls
    assert ("create_network", 0) in rec.calls
    assert ("set_shape", "rgb", (1, 3, 32, 64), (4, 3, 32, 64), (16, 3, 32, 64)) in rec.calls
    norm, soft = rec.network.layers[1], rec.network.layers[2]
    assert norm.precision == "float32" and soft.outputs == {0: "float32"} and rec.network.layers[0].precision is None
    assert facts["fp32_pinned_layers"] == 2 and facts["plan"]["builder_flags"][0] == "FP16"
    assert (tmp_path / "timing.cache").read_bytes() == b"+timed"


def test_build_engine_tensorrt11_strongly_typed_and_timing_cache_reused(fake_trt, tmp_path):
    rec = fake_trt("11.0.0")
    onnx = tmp_path / "model.fp16.onnx"
    onnx.write_bytes(b"onnx")
    (tmp_path / "timing.cache").write_bytes(b"old")
    T.build_engine(onnx, tmp_path / "e.engine", "fp16", timing_cache=tmp_path / "timing.cache")
    assert not [c for c in rec.calls if c[0] == "set_flag"]  # no precision flags exist on 11
    assert ("timing_cache_in", b"old") in rec.calls
    assert (tmp_path / "timing.cache").read_bytes() == b"old+timed"
    T.build_engine(onnx, tmp_path / "e32.engine", "fp32", timing_cache=tmp_path / "timing.cache")
    assert ("clear_flag", "TF32") in rec.calls


def test_build_engine_parse_error_and_old_version(fake_trt, tmp_path):
    fake_trt("10.0.1")
    with pytest.raises(GraftError, match="could not parse"):
        T.build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine")
    assert not (tmp_path / "e.engine").exists()
    fake_trt("8.6.1")
    with pytest.raises(GraftError, match="too old"):
        T.build_engine(tmp_path / "missing.onnx", tmp_path / "e.engine")


def test_require_tensorrt_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    monkeypatch.setattr(TB, "nvidia_gpu_available", lambda: False)
    with pytest.raises(TB.TensorRTUnavailable) as exc:
        TB.require_tensorrt()
    msg = str(exc.value)
    assert "tensorrt package is not installed" in msg and "no NVIDIA GPU" in msg and "\n" not in msg
    monkeypatch.setattr(TB, "nvidia_gpu_available", lambda: True)
    with pytest.raises(TB.TensorRTUnavailable, match="not installed") as exc:
        TB.require_tensorrt()
    assert "GPU" not in str(exc.value).split("(")[0]


def test_engine_runner_without_sidecar_is_refused(tmp_path):
    from graft_edge.runtime import load_embedder

    engine = tmp_path / "x.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(GraftError, match="no metadata sidecar x.json"):
        load_embedder(engine)


# ------------------------------------------------------------------ real TensorRT (skipped without it)


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_real_engine_matches_pytorch(tmp_path, tiny_checkpoint_factory):  # noqa: F811
    from graft_edge.export.pipeline import ExportOptions, export_model
    from graft_edge.runtime import load_embedder

    ckpt = tiny_checkpoint_factory(("rgb", "nir"))
    result = export_model(ckpt, tmp_path / "out", ExportOptions(formats=("onnx", "fp16", "trt-fp32", "trt-fp16"), batch="1:2:8"))
    engine = result.get("trt-fp32")
    assert engine is not None and engine.status == "ok" and engine.parity["min_cosine"] > 0.9999
    emb = load_embedder(engine.path, device="cuda")
    assert emb.info.format == "tensorrt" and emb.info.extra["batch_profile"] == [1, 2, 8]
    import numpy as np

    with pytest.raises(GraftError, match="outside"):
        emb.embed({m: np.zeros((9, 3, 32, 64), np.float32) for m in ("rgb", "nir")})
    assert result.get("trt-fp16").parity["min_cosine"] > 0.999
    # missing sensors: the engine takes the presence mask; every subset is checked at export and matches here
    assert {c["modalities"] for c in engine.parity["checks"]} == {"all", "rgb", "nir"}
    import torch

    from graft_edge.checkpoint import load_model

    model, _ = load_model(ckpt)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 64), dtype=np.float32)
    for m in ("rgb", "nir"):
        with torch.no_grad():
            ref = model.eval().embed({m: torch.from_numpy(x)}).numpy()
        got = emb.embed({m: x})
        assert np.min(np.sum(got * ref, axis=1)) > 0.9999  # TF32 may be on: judged by cosine like the export
