"""CUDA paths on a real NVIDIA GPU: bf16 training, CUDA inference parity, NVML telemetry, bench on cuda.

Every test here is marked `gpu` and skipped only where PyTorch sees no NVIDIA GPU (see conftest.py).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from graft_edge.checkpoint import save_checkpoint
from graft_edge.config import get_preset
from graft_edge.model import build_model

pytestmark = pytest.mark.gpu
MIB = 1024.0**2


def tiny_cfg(amp: bool = True):
    """The synthetic preset with bf16 autocast switched on (the preset turns it off for CPUs)."""
    cfg = get_preset("synthetic")
    return replace(cfg, train=replace(cfg.train, amp=amp))


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graft_edge.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("gpu") / "syn"
    write_synthetic(root, ids=16, cameras=4, images_per_camera=2, seed=0)
    return root


@pytest.fixture(scope="module")
def gpu_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_cfg()
    path = tmp_path_factory.mktemp("gpu") / "tiny.pt"
    save_checkpoint(path, build_model(cfg.model), cfg)
    return path


def test_bf16_train_steps_on_cuda_reduce_loss() -> None:
    from graft_edge.train.distributed import DistEnv
    from graft_edge.train.loop import make_stage, train_step

    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg.model).to("cuda")
    run = make_stage(model, cfg.train.stage1, total_steps=30, env=DistEnv(device="cuda:0"), amp=True)
    assert run.amp  # bf16 autocast is on for a CUDA device
    H, W = cfg.model.img_size
    labels = torch.arange(8).repeat_interleave(4)
    images = {m: torch.randn(32, 3, H, W) + labels.view(-1, 1, 1, 1) * 0.05 for m in cfg.model.modalities}
    first = float(train_step(run, images, labels).total.detach())
    for _ in range(25):
        last = float(train_step(run, images, labels).total.detach())
    assert np.isfinite(first) and np.isfinite(last) and last < first
    assert next(model.parameters()).dtype == torch.float32  # autocast keeps master weights in fp32


def test_cuda_embeddings_match_cpu(gpu_checkpoint: Path) -> None:
    from graft_edge.runtime import load_embedder

    cfg = tiny_cfg()
    H, W = cfg.model.img_size
    rng = np.random.default_rng(0)
    batch = {m: rng.standard_normal((4, 3, H, W)).astype(np.float32) for m in cfg.model.modalities}
    cpu = load_embedder(gpu_checkpoint, device="cpu").embed(batch)
    gpu = load_embedder(gpu_checkpoint, device="cuda").embed(batch)
    cos = (cpu * gpu).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(gpu, axis=1))
    assert cos.min() > 0.9999  # TF32 may be on for CUDA matmuls: not bit-equal, but the same embedding


def test_train_two_stages_on_cuda(gpu_data: Path, tmp_path: Path) -> None:
    from graft_edge.checkpoint import read_checkpoint
    from graft_edge.train import run_training

    res = run_training(tiny_cfg(), gpu_data, tmp_path / "run", max_steps=4, progress=False)
    assert res.steps == 8 and (tmp_path / "run" / "best.pt").is_file()
    assert 0.0 <= res.metrics["mAP"] <= 1.0
    assert all(t.device.type == "cpu" for t in read_checkpoint(tmp_path / "run" / "best.pt").state_dict.values())


def test_gpu_monitor_reads_nvml_around_gpu_work() -> None:
    from graft_edge.profile.telemetry import GpuMonitor

    mon = GpuMonitor("cuda:0")
    if not mon.available:
        pytest.skip(f"NVML cannot open the GPU here: {mon.reason}")
    total_mb = torch.cuda.get_device_properties(0).total_memory / MIB
    torch.zeros(1, device="cuda")  # the CUDA context exists before the window ...
    torch.cuda.empty_cache()  # ... and no cached block can hold the tensors below: they are new device memory
    mon.start()
    a = torch.randn(4096, 4096, device="cuda")  # 64 MiB; a, a @ a and its /64 are alive together: 192 MiB
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.5 or iters < 50:  # longer than NVML's update periods (~0.1-1 s)
        a = torch.tanh(a @ a / 64.0)
        iters += 1
        if iters % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    mon.sample()
    reserved_mb = torch.cuda.memory_reserved() / MIB
    rec = mon.stop(samples=iters)
    mon.close()
    mem = rec["memory"]
    assert mem["available"] and mem["method"].startswith("NVML")
    assert 128 <= mem["device_increase_mb"] <= 192 + 2048, mem  # our 192 MiB (+ cuBLAS workspace, kernels)
    assert reserved_mb >= 192
    assert max(reserved_mb, mem["device_increase_mb"]) <= mem["device_used_peak_mb"] <= total_mb, (mem, total_mb)
    util = rec["utilization"]
    assert util["available"] and util["samples"] == 3  # start(), the explicit sample(), stop()
    assert 0 <= util["mean_pct"] <= util["max_pct"] <= 100 and util["max_pct"] > 0, util  # the GPU was busy
    power = rec["power"]
    if power["available"]:  # data-centre GPUs report energy; Jetson-like boards give a reason instead
        assert power["duration_s"] >= 1.5 and "note" not in power  # long enough for NVML's counters
        assert 0 < power["mean_w"] < 2000, power
        assert power["mean_w"] == pytest.approx(power["energy_j"] / power["duration_s"], rel=1e-9)
        assert power["energy_per_sample_j"] == pytest.approx(power["energy_j"] / iters, rel=1e-9)
    else:
        assert power["reason"]


def test_bench_on_cuda_records_gpu_fields(gpu_checkpoint: Path) -> None:
    from graft_edge.checkpoint import read_checkpoint
    from graft_edge.profile.bench import BenchSettings, bench_models, validate_bench_result
    from graft_edge.profile.telemetry import GpuMonitor

    probe = GpuMonitor("cuda:0")
    nvml = probe.available
    probe.close()
    weights_mb = sum(t.numel() * t.element_size() for t in read_checkpoint(gpu_checkpoint).state_dict.values()) / MIB
    report = bench_models([gpu_checkpoint], BenchSettings(batches=(1, 8), warmup=2, iters=10, device="cuda"))
    validate_bench_result(report)
    (result,) = report["results"]
    assert result["status"] == "ok", result.get("error")
    gpus = report["machine"]["gpus"]
    assert gpus, "the machine record names the GPU"
    total_mb = torch.cuda.get_device_properties(0).total_memory / MIB
    assert gpus[0]["memory_mb"] == pytest.approx(total_mb, rel=0.05)
    for run, batch in zip(result["runs"], (1, 8), strict=True):
        assert run["batch"] == batch and run["status"] == "ok"
        lat = run["latency"]
        assert lat["batch"] == batch and lat["n"] == 10 and lat["p50_ms"] > 0
        assert lat["throughput"] == pytest.approx(batch * 1000.0 / lat["mean_ms"], rel=1e-6)
        gpu = run["memory"]["gpu"]
        assert gpu["available"], gpu
        # torch's allocator peak holds the whole model (it lives on the GPU) plus activations of a tiny ViT
        assert weights_mb <= gpu["torch_max_allocated_mb"] <= gpu["torch_max_reserved_mb"], (gpu, weights_mb)
        assert gpu["torch_max_allocated_mb"] <= weights_mb + 512, (gpu, weights_mb)
        if nvml:  # the device-wide NVML reading includes everything torch reserved
            assert gpu["torch_max_reserved_mb"] <= gpu["device_used_peak_mb"] <= total_mb, gpu
            assert -1.0 <= gpu["device_increase_mb"] <= gpu["device_used_peak_mb"], gpu
            util = run["utilization"]
            assert util["available"] and 0 <= util["mean_pct"] <= util["max_pct"] <= 100
        power = run["power"]
        if power["available"]:
            assert power["energy_j"] >= 0 and power["duration_s"] > 0
            assert power["energy_per_sample_j"] == pytest.approx(power["energy_j"] / (batch * lat["n"]), rel=1e-9)
        cpu = run["memory"]["cpu"]
        assert cpu["available"] and cpu["rss_peak_mb"] >= cpu["rss_start_mb"] > 0
