"""The machine and software a measurement was taken on (recorded with every result)."""
from __future__ import annotations

import functools
import os
import platform
import sys
from importlib import metadata
from typing import Any


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD features that matter for inference kernels (AVX2/AVX-512/VNNI/AMX/NEON...)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "asimd",
              "asimddp", "sve", "fma")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.partition(":")[2].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, Any]:
    """python, torch (+CUDA), onnxruntime, tensorrt, timm, numpy, graft-edge versions (None if absent)."""
    from graft_edge import __version__

    out: dict[str, Any] = {"python": platform.python_version(), "graft_edge": __version__}
    try:
        import torch

        out["torch"] = str(torch.__version__)
        out["torch_cuda"] = torch.version.cuda
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        out["torch"] = None
    out["onnxruntime"] = _version("onnxruntime") or _version("onnxruntime-gpu")
    out["tensorrt"] = _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt_lean")
    for dist in ("onnx", "timm", "numpy", "torch-pruning"):
        out[dist.replace("-", "_")] = _version(dist)
    return out


def gpu_info() -> list[dict[str, Any]]:
    """NVIDIA GPUs by NVML (name, memory, driver, power limit); [] where NVML is unavailable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return _gpu_info_torch()
    gpus = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            g: dict[str, Any] = {"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                                 "driver": driver}
            try:
                g["memory_mb"] = pynvml.nvmlDeviceGetMemoryInfo(h).total / 1024**2
            except pynvml.NVMLError:
                pass
            try:
                g["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            except pynvml.NVMLError:
                pass
            gpus.append(g)
    except pynvml.NVMLError:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus or _gpu_info_torch()


def _gpu_info_torch() -> list[dict[str, Any]]:
    """GPUs as torch sees them (Jetson without NVML, ROCm); driver unknown there."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [{"index": i, "name": torch.cuda.get_device_name(i), "driver": None,
                 "memory_mb": torch.cuda.get_device_properties(i).total_memory / 1024**2}
                for i in range(torch.cuda.device_count())]
    except Exception:
        return []


@functools.lru_cache(maxsize=1)
def _machine_static() -> dict[str, Any]:
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1) if mem_kb else None,
        "os": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
        "gpus": gpu_info(),
    }


def machine_info() -> dict[str, Any]:
    """Hardware + software record: {cpu, cores, cores_usable, memory_gb, os, arch, gpus, software}."""
    return {**_machine_static(), "software": software_versions(), "argv": list(sys.argv)}
