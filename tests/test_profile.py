"""graft_edge.profile: percentiles, timing loop, telemetry fallbacks, hardware record, bench schema and CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graft_edge.errors import GraftError
from graft_edge.profile import stats
from graft_edge.profile.latency import interleaved_latency, synthetic_batch, time_embedder, warm_up
from graft_edge.runtime import artefact_files, artefact_size

# ------------------------------------------------------------------ percentiles


@pytest.mark.parametrize("samples, q, expected", [
    ([1, 2, 3, 4], 50, 2.5),
    (list(range(1, 11)), 90, 9.1),
    (list(range(1, 11)), 99, 9.91),
    ([5.0], 99, 5.0),
    ([3, 1, 2], 0, 1.0),
    ([3, 1, 2], 100, 3.0),
    ([10, 20], 25, 12.5),
])
def test_percentile_known_values(samples, q, expected):
    assert stats.percentile(samples, q) == pytest.approx(expected)


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    xs = rng.exponential(3.0, size=37).tolist()
    for q in (0, 1, 10, 50, 90, 99, 99.9, 100):
        assert stats.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q, method="linear")))


@pytest.mark.parametrize("q", [-1, 101, float("nan")])
def test_percentile_rejects_bad_q(q):
    with pytest.raises(GraftError):
        stats.percentile([1, 2], q)


def test_percentile_rejects_empty():
    with pytest.raises(GraftError):
        stats.percentile([], 50)


def test_summarize():
    s = stats.summarize([10.0, 20.0, 30.0, 40.0], batch=8)
    assert (s.n, s.mean_ms, s.p50_ms, s.min_ms, s.max_ms) == (4, 25.0, 25.0, 10.0, 40.0)
    assert s.p90_ms == pytest.approx(37.0)
    assert s.per_sample_ms == pytest.approx(25.0 / 8)
    assert s.throughput == pytest.approx(8 * 4 / 0.1)  # 32 samples in 100 ms
    assert s.std_ms == pytest.approx(np.std([10, 20, 30, 40], ddof=1))
    with pytest.raises(GraftError):
        stats.summarize([], batch=1)


# ------------------------------------------------------------------ timing loop

class FakeEmbedder:
    """Counts calls; sleeps `delay` seconds per call."""

    def __init__(self, delay: float = 0.0, fail_batch: int | None = None):
        from graft_edge.artefact.embedder import EmbedderInfo

        self.info = EmbedderInfo(format="onnx", path="fake.onnx", modalities=("rgb", "nir"), img_size=(8, 4),
                                 mean=(0.5,) * 3, std=(0.5,) * 3, embed_dim=4, params_embedding=10, params_nonzero=10)
        self.calls = 0
        self.syncs = 0
        self.delay = delay
        self.fail_batch = fail_batch

    def embed(self, batch):
        import time

        b = next(iter(batch.values())).shape[0]
        if b == self.fail_batch:
            raise GraftError(f"batch {b} is outside the engine's optimisation profile (1..4)")
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return np.zeros((b, 4), np.float32)

    def synchronize(self):
        self.syncs += 1


def test_synthetic_batch_shape():
    emb = FakeEmbedder()
    x = synthetic_batch(emb.info, 3)
    assert set(x) == {"rgb", "nir"} and x["rgb"].shape == (3, 3, 8, 4) and x["rgb"].dtype == np.float32


def test_time_embedder_iters_and_warmup():
    emb = FakeEmbedder()
    ticks = []
    t = time_embedder(emb, synthetic_batch(emb.info, 2), warmup=2, iters=7, on_iter=ticks.append)
    assert len(t) == 7 and emb.calls == 9 and len(ticks) == 9
    assert emb.syncs >= 7  # synchronised around every timed call
    assert all(v >= 0 for v in t)


def test_time_embedder_seconds_budget():
    emb = FakeEmbedder(delay=0.002)
    t = time_embedder(emb, synthetic_batch(emb.info, 1), warmup=0, seconds=0.03)
    assert len(t) >= 5 and sum(t) >= 30 * 0.9


def test_time_embedder_bad_options():
    emb = FakeEmbedder()
    x = synthetic_batch(emb.info, 1)
    for kw in ({"iters": 2, "seconds": 1.0}, {"iters": 0}, {"seconds": 0}, {"warmup": -1, "iters": 1}):
        with pytest.raises(GraftError):
            time_embedder(emb, x, **kw)


def test_interleaved_latency_pools_rounds():
    a, b = FakeEmbedder(), FakeEmbedder()
    x = synthetic_batch(a.info, 1)
    out = interleaved_latency({"a": a, "b": b}, {"a": x, "b": x}, rounds=3, iters_per_round=2, warmup=1)
    assert len(out["a"]) == len(out["b"]) == 6
    assert a.calls == b.calls == 1 + 3 * (1 + 2)  # warm-up, then per round one switch-in call and two timed
    warm_up(a, x, 0)  # zero warm-up is allowed
    assert a.calls == 10


class SwitchCostEmbedder(FakeEmbedder):
    """Slow on the first call after another embedder ran (a runtime taking over a busy CPU)."""

    def __init__(self, last: list, name: str) -> None:
        super().__init__()
        self.last, self.name = last, name

    def embed(self, batch):
        slow = self.last and self.last[0] != self.name
        self.last[:] = [self.name]
        self.delay = 0.02 if slow else 0.0
        return super().embed(batch)


@pytest.mark.parametrize("switch_warmup,slow_samples", [(0, 3), (1, 0)])
def test_interleaved_switch_in_call_keeps_takeover_cost_out(switch_warmup, slow_samples):
    last: list = []
    a, b = SwitchCostEmbedder(last, "a"), SwitchCostEmbedder(last, "b")
    x = synthetic_batch(a.info, 1)
    out = interleaved_latency({"a": a, "b": b}, {"a": x, "b": x}, rounds=3, iters_per_round=2, warmup=1,
                              switch_warmup=switch_warmup)
    assert sum(t >= 15.0 for t in out["b"]) == slow_samples  # ms
    with pytest.raises(GraftError):
        interleaved_latency({"a": a}, {"a": x}, switch_warmup=-1)


# ------------------------------------------------------------------ telemetry / NVML fallbacks

def test_memory_sampler_sees_allocation():
    import mmap

    from graft_edge.profile.telemetry import MemorySampler

    size = 40 * 1024 * 1024
    with MemorySampler(interval=0.001) as mem:
        # fresh anonymous pages from the kernel (a numpy array could reuse pages the allocator kept resident)
        block = mmap.mmap(-1, size)
        block.write(b"\x01" * size)  # 40 MiB touched
        block.close()
    r = mem.result()
    assert r["available"] and r["rss_peak_mb"] >= r["rss_start_mb"] + 30


def _raiser(exc_cls):
    def f(*a, **k):
        raise exc_cls()
    return f


def test_nvml_library_not_found(monkeypatch):
    import pynvml

    from graft_edge.profile.telemetry import GpuMonitor

    monkeypatch.setattr(pynvml, "nvmlInit", _raiser(pynvml.NVMLError_LibraryNotFound))
    mon = GpuMonitor("cuda")
    assert not mon.available and "library not found" in mon.reason
    mon.start()
    out = mon.stop(samples=10)
    assert out["power"] == {"available": False, "reason": mon.reason}
    assert not out["utilization"]["available"] and not out["memory"]["available"]
    mon.close()


def test_nvml_no_gpu(monkeypatch):
    import pynvml

    from graft_edge.profile.telemetry import GpuMonitor

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)
    mon = GpuMonitor("cuda:0")
    assert not mon.available and "no NVIDIA GPU" in mon.reason
    assert mon.stop(1)["power"]["available"] is False


def test_nvml_driver_not_loaded(monkeypatch):
    import pynvml

    from graft_edge.profile.telemetry import GpuMonitor

    monkeypatch.setattr(pynvml, "nvmlInit", _raiser(pynvml.NVMLError_DriverNotLoaded))
    assert "driver not loaded" in GpuMonitor("cuda").reason


class _Util:
    gpu = 87


class _Mem:
    used = 3 * 1024**3


def _fake_gpu(monkeypatch, energy=True, power=True):
    """A fake one-GPU NVML: energy counter advancing 5 J per read, 50 W power, 87 % utilisation."""
    import pynvml

    counter = {"mj": 1_000_000}

    def energy_fn(h):
        if not energy:
            raise pynvml.NVMLError_NotSupported()
        counter["mj"] += 5000
        return counter["mj"]

    def power_fn(h):
        if not power:
            raise pynvml.NVMLError_NotSupported()
        return 50_000

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 1)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: "h0")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", energy_fn)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", power_fn)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: _Util())
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lambda h: _Mem())


def test_nvml_energy_counter(monkeypatch):
    from graft_edge.profile.telemetry import GpuMonitor

    _fake_gpu(monkeypatch)
    mon = GpuMonitor("cuda")
    assert mon.available
    mon.start()
    out = mon.stop(samples=100)
    p = out["power"]
    assert p["available"] and p["method"] == "total energy counter"
    assert p["energy_j"] == pytest.approx(5.0) and p["energy_per_sample_j"] == pytest.approx(0.05)
    assert "coarse" in p["note"]  # an instant run is far shorter than NVML's update period
    assert out["utilization"]["mean_pct"] == 87
    assert out["memory"]["device_used_peak_mb"] == pytest.approx(3 * 1024)


def test_nvml_energy_unsupported_falls_back_to_power_samples(monkeypatch):
    from graft_edge.profile.telemetry import GpuMonitor

    _fake_gpu(monkeypatch, energy=False)
    mon = GpuMonitor("cuda")
    mon.start()
    p = mon.stop(samples=10)["power"]
    assert p["available"] and p["mean_w"] == pytest.approx(50.0) and "power samples" in p["method"]


def test_nvml_power_not_supported_jetson(monkeypatch):
    from graft_edge.profile.telemetry import GpuMonitor

    _fake_gpu(monkeypatch, energy=False, power=False)
    mon = GpuMonitor("cuda")
    mon.start()
    out = mon.stop(samples=10)
    assert out["power"]["available"] is False and "not supported" in out["power"]["reason"]
    assert out["utilization"]["available"]  # the rest still works


def test_nvml_index_respects_visible_devices(monkeypatch):
    from graft_edge.profile.telemetry import nvml_index

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert nvml_index("cuda:1") == 1 and nvml_index("cuda") == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert nvml_index("cuda:0") == "GPU-abc"


def test_hardware_record():
    import os
    import platform
    import sys

    import onnxruntime
    import torch

    import graft_edge
    from graft_edge.profile.hardware import machine_info

    m = machine_info()
    assert m["cpu"] and m["cores"] == os.cpu_count() and 1 <= m["cores_usable"] <= m["cores"]
    phys_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    assert m["memory_gb"] == pytest.approx(phys_gb, abs=0.1)
    assert m["arch"] == platform.machine() and m["os"].startswith(platform.system()) and m["argv"] == sys.argv
    assert len(m["gpus"]) >= torch.cuda.device_count()
    assert all(g["name"] and g["memory_mb"] > 0 for g in m["gpus"])
    sw = m["software"]
    assert sw["python"] == platform.python_version() and sw["graft_edge"] == graft_edge.__version__
    assert sw["torch"] == str(torch.__version__) and sw["numpy"] == np.__version__
    assert sw["onnxruntime"] == onnxruntime.__version__ and sw["torch_threads"] == torch.get_num_threads()


# ------------------------------------------------------------------ bench library + schema

def test_artefact_files_count_onnx_external_data(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    files = artefact_files(path)
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    assert artefact_size(path) == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size >= 64 * 64 * 4


def test_bench_report_validates_and_reports_failures(tiny_checkpoint, tmp_path, monkeypatch):
    from graft_edge.profile import bench

    settings = bench.BenchSettings(batches=(1, 2), warmup=1, iters=2)
    report = bench.bench_models([tiny_checkpoint, tmp_path / "nope.onnx"], settings)
    bench.validate_bench_result(json.loads(json.dumps(report)))
    ok, bad = report["results"]
    assert ok["status"] == "ok" and ok["format"] == "torch" and ok["size_bytes"] == tiny_checkpoint.stat().st_size
    assert [r["latency"]["batch"] for r in ok["runs"]] == [1, 2]
    assert ok["runs"][0]["memory"]["cpu"]["available"]
    assert ok["runs"][0]["power"] == {"available": False, "reason": "not measured: --device cpu"}
    assert bad["status"].startswith("error: ") and "does not exist" in bad["error"]
    assert bench.any_failed(report)


def test_bench_batch_outside_profile_is_a_run_error(monkeypatch):
    from graft_edge.profile import bench

    fake = FakeEmbedder(fail_batch=8)
    monkeypatch.setattr(bench, "load_embedder",
                        lambda path, device="cpu", threads=None, modalities=None, dtype="fp32": fake)
    monkeypatch.setattr(bench, "_preimport_backend", lambda p: None)
    res = bench.bench_model(Path("engine.plan"), bench.BenchSettings(batches=(1, 8, 2), warmup=0, iters=2))
    assert [r["status"] for r in res["runs"]][0::2] == ["ok", "ok"]
    assert res["runs"][1]["status"].startswith("error: batch 8 is outside")
    assert res["status"].startswith("error: batch 8:")


def test_validator_rejects_broken_documents(tiny_checkpoint):
    from graft_edge.profile import bench

    good = bench.bench_models([tiny_checkpoint], bench.BenchSettings(batches=(1,), warmup=0, iters=2))
    bench.validate_bench_result(good)

    def broken(mutate):
        doc = json.loads(json.dumps(good))
        mutate(doc)
        with pytest.raises(GraftError):
            bench.validate_bench_result(doc)

    broken(lambda d: d.update(schema_version=1))
    broken(lambda d: d["machine"]["software"].pop("torch"))
    broken(lambda d: d["settings"].update(batches=[0]))
    broken(lambda d: d["settings"].update(warmup=True))
    broken(lambda d: d["results"][0].update(status="fine"))
    broken(lambda d: d["results"][0]["runs"][0]["latency"].pop("p99_ms"))
    broken(lambda d: d["results"][0]["runs"][0]["latency"].update(p50_ms=1e9))
    broken(lambda d: d["results"][0]["runs"][0]["power"].pop("reason"))
    broken(lambda d: d["results"][0].update(accuracy={"mAP": 75.0, "R1": 0.9, "R5": 1.0, "R10": 1.0}))
    broken(lambda d: d["results"][0]["runs"].append(d["results"][0]["runs"][0]))


# ------------------------------------------------------------------ CLI

def test_bench_cli_continues_after_bad_model(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from graft_edge.cli.main import app
    from graft_edge.profile.bench import validate_bench_result

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", str(bad), str(tiny_checkpoint), "--batch", "1,2", "--warmup", "1",
                                   "--iters", "2", "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert "error:" in res.output and "broken.pt" in res.output and "tiny.pt" in res.output
    assert "Traceback" not in res.output
    doc = json.loads(out.read_text())
    validate_bench_result(doc)
    assert [r["status"] == "ok" for r in doc["results"]] == [False, True]
    assert doc["settings"]["batches"] == [1, 2]


def test_bench_cli_ok_exit_zero_and_bad_options(tiny_checkpoint):
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    r = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--iters", "2", "--warmup", "0"])
    assert r.exit_code == 0, r.output
    assert "torch" in r.output and "ok" in r.output
    for args, text in ((["--batch", "0"], "--batch"), (["--iters", "2", "--seconds", "1"], "not both"),
                       (["--device", "tpu"], "--device")):
        r = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), *args])
        assert r.exit_code == 2 and text in r.output, r.output


def test_bench_help_lists_units():
    from typer.testing import CliRunner

    from graft_edge.cli.main import app

    r = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for opt in ("--batch", "--warmup", "--iters", "--seconds", "--threads", "--device", "--data", "--json"):
        assert opt in r.output


def test_bench_cli_json_to_stdout_is_pure_json(tiny_checkpoint):
    from typer.testing import CliRunner

    from graft_edge.checkpoint import load_model
    from graft_edge.cli.main import app
    from graft_edge.model import embedding_params
    from graft_edge.profile.bench import validate_bench_result

    r = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--iters", "3", "--warmup", "0", "--batch", "1,2",
                                 "--json", "-"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate_bench_result(doc)
    assert doc["settings"]["batches"] == [1, 2] and doc["settings"]["iters"] == 3 and doc["settings"]["warmup"] == 0
    (res,) = doc["results"]
    model, _ = load_model(tiny_checkpoint)
    assert res["format"] == "torch" and res["precision"] == "fp32" and res["modalities"] == ["rgb", "nir", "tir"]
    assert res["params_embedding"] == embedding_params(model) and res["img_size"] == [32, 64]
    assert res["size_bytes"] == tiny_checkpoint.stat().st_size and res["files"] == [str(tiny_checkpoint)]
    for run, batch in zip(res["runs"], (1, 2), strict=True):
        lat = run["latency"]
        assert run["batch"] == lat["batch"] == batch and lat["n"] == 3
        assert lat["per_sample_ms"] == pytest.approx(lat["p50_ms"] / batch)
        assert lat["throughput"] == pytest.approx(batch * 1000.0 / lat["mean_ms"])
        assert run["memory"]["cpu"]["rss_peak_mb"] > 0
        assert not run["power"]["available"] and "--device cpu" in run["power"]["reason"]
