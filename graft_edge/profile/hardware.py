"""The machine and software a measurement was taken on (recorded with every result)."""
from __future__ import annotations

import functools
import os
import platform
import sys
from typing import Any

import torch

from graft_edge.artefact.versions import software_versions as artefact_software_versions
from graft_edge.cpu import cpu_flags, cpu_model, isa_cap


def software_versions() -> dict[str, Any]:
    """The artefact record's software versions plus torch's CUDA build and thread count."""
    out = dict(artefact_software_versions())
    out["torch"] = str(torch.__version__)  # with the local build tag (+cu130, +cpu) package metadata lacks
    out["torch_cuda"] = torch.version.cuda
    out["torch_threads"] = torch.get_num_threads()
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
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "isa_cap": isa_cap(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1) if mem_kb else None,
        "os": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
        "gpus": gpu_info(),
    }


def machine_info() -> dict[str, Any]:
    """Hardware + software record: {cpu, cores, cores_usable, memory_gb, os, arch, gpus, software}."""
    return {**_machine_static(), "software": software_versions(), "argv": list(sys.argv)}
