"""Telemetry around a timed run: process memory (RSS), GPU memory, power, energy and utilisation.

Everything degrades to `{"available": False, "reason": "..."}` instead of raising: no NVML library
(CPUs, `NVMLError_LibraryNotFound`), no driver, no GPU, or a GPU whose NVML does not report power
(Jetson: `NVMLError_NotSupported`).  Energy comes from the driver's total-energy counter
(`nvmlDeviceGetTotalEnergyConsumption`, mJ, Volta and newer) read before and after the run; where
that counter is unsupported, from power samples integrated over time; where neither is, it is
"not available".
"""
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

MB = 1024.0 * 1024.0
_STATUS = "/proc/self/status"


# ------------------------------------------------------------------ process memory

def read_status_kb(field: str) -> int | None:
    """A `/proc/self/status` field in kB (VmRSS, VmHWM), or None where /proc is unavailable."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    """Current resident set size in MiB (None where not measurable)."""
    kb = read_status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) via /proc/self/clear_refs; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemorySampler:
    """Context manager: the peak process RSS during the block (and GPU memory through NVML, optional).

    The peak is the larger of (a) the kernel's high-water mark VmHWM after resetting it at entry
    (exact, Linux >= 4.0) and (b) a sampling thread reading VmRSS every `interval` seconds (the
    fallback where the reset is not permitted).  Without /proc, `resource.getrusage` ru_maxrss (the
    process-lifetime peak) is reported and labelled as such.
    """

    def __init__(self, interval: float = 0.005, gpu: GpuMonitor | None = None) -> None:
        self.interval = interval
        self.gpu = gpu
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_kb = 0
        self.samples = 0
        self.hwm_reset = False
        self.start_kb: int | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = read_status_kb("VmRSS")
            if kb is not None:
                self.peak_kb = max(self.peak_kb, kb)
                self.samples += 1
            if self.gpu is not None:
                self.gpu.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self.hwm_reset = reset_peak_rss()
        self.start_kb = read_status_kb("VmRSS")
        self.peak_kb = self.start_kb or 0
        self._thread = threading.Thread(target=self._run, name="graft-edge-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        kb = read_status_kb("VmRSS")
        if kb is not None:
            self.peak_kb = max(self.peak_kb, kb)

    def result(self, baseline_mb: float | None = None) -> dict[str, Any]:
        """{available, rss_peak_mb, rss_start_mb, rss_increase_mb (over `baseline_mb`), method}."""
        if self.start_kb is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak_mb = peak / 1024.0 if os.uname().sysname == "Linux" else peak / MB
            return {"available": True, "rss_peak_mb": peak_mb, "rss_start_mb": None, "rss_increase_mb": None,
                    "method": "ru_maxrss (process-lifetime peak)"}
        peak_kb = self.peak_kb
        method = f"VmRSS sampled every {self.interval * 1000:.0f} ms"
        if self.hwm_reset:
            hwm = read_status_kb("VmHWM")
            if hwm is not None:
                peak_kb = max(peak_kb, hwm)
                method = "VmHWM (reset at start) and VmRSS sampling"
        peak_mb = peak_kb / 1024.0
        base = baseline_mb if baseline_mb is not None else self.start_kb / 1024.0
        return {"available": True, "rss_peak_mb": peak_mb, "rss_start_mb": self.start_kb / 1024.0,
                "rss_increase_mb": peak_mb - base, "method": method}


# ------------------------------------------------------------------ NVML

def not_available(reason: str) -> dict[str, Any]:
    """The uniform 'not available' record."""
    return {"available": False, "reason": reason}


def _nvml_reason(exc: BaseException) -> str:
    import pynvml

    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return "NVML library not found (no NVIDIA driver on this machine)"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded"
    if isinstance(exc, pynvml.NVMLError_NotSupported):
        return "not supported by this GPU's NVML (e.g. Jetson)"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "NVML permission denied"
    if isinstance(exc, (pynvml.NVMLError_GpuNotFound, pynvml.NVMLError_NotFound, pynvml.NVMLError_InvalidArgument)):
        return "GPU not found by NVML"
    return f"NVML error: {exc}"


def nvml_index(device: str) -> str | int:
    """NVML handle key of a torch-style device string: an index, or a GPU UUID from CUDA_VISIBLE_DEVICES."""
    m = re.match(r"^cuda(?::(\d+))?$", device.strip())
    idx = int(m.group(1) or 0) if m else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if idx < len(visible):
        v = visible[idx]
        return int(v) if v.isdigit() else v
    return idx


MIN_POWER_WINDOW_S = 1.0  # below this, NVML energy/power figures are coarse (counter update period ~100 ms)


class GpuMonitor:
    """NVML power / energy / utilisation / memory of one GPU around a run; never raises.

    Use: `mon = GpuMonitor("cuda:0")`; `mon.start()`; `mon.sample()` from a sampling thread (the
    MemorySampler does it); `mon.stop(samples)` -> dict with power, energy, utilization and
    memory records, each with `available` and, when False, a `reason`.
    """

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self.handle: Any = None
        self.reason: str | None = None
        self._pynvml: Any = None
        self._energy0: int | None = None
        self._energy_reason: str | None = None
        self._power: list[float] = []
        self._power_reason: str | None = None
        self._util: list[float] = []
        self._util_reason: str | None = None
        self._mem_peak: int = 0
        self._mem0: int | None = None
        self._mem_reason: str | None = None
        self._t0 = 0.0
        self._t1 = 0.0
        self._lock = threading.Lock()
        self._inited = False
        self._open()

    def _open(self) -> None:
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
            return
        self._pynvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = _nvml_reason(exc)
            return
        except Exception as exc:  # a broken library file, ctypes errors
            self.reason = f"NVML unusable: {type(exc).__name__}: {exc}"
            return
        self._inited = True
        try:
            if pynvml.nvmlDeviceGetCount() < 1:
                self.reason = "no NVIDIA GPU found by NVML"
                return
            key = nvml_index(self.device)
            self.handle = (pynvml.nvmlDeviceGetHandleByUUID(key) if isinstance(key, str)
                           else pynvml.nvmlDeviceGetHandleByIndex(key))
        except pynvml.NVMLError as exc:
            self.reason = _nvml_reason(exc)
            self.handle = None

    @property
    def available(self) -> bool:
        """True when a GPU handle is open."""
        return self.handle is not None

    def memory_used(self) -> int | None:
        """Device memory in use (bytes), all processes."""
        if not self.available:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        except self._pynvml.NVMLError as exc:
            self._mem_reason = _nvml_reason(exc)
            return None

    def start(self) -> None:
        """Read the energy counter and memory baseline; start collecting samples."""
        self._power, self._util = [], []
        self._t0 = time.perf_counter()
        if not self.available:
            return
        p = self._pynvml
        try:
            self._energy0 = int(p.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except p.NVMLError as exc:
            self._energy0, self._energy_reason = None, _nvml_reason(exc)
        self._mem0 = self.memory_used()
        self._mem_peak = self._mem0 or 0
        self.sample()

    def sample(self) -> None:
        """Take one power / utilisation / memory sample (called from the sampling thread)."""
        if not self.available:
            return
        p = self._pynvml
        with self._lock:
            if self._power_reason is None:
                try:
                    self._power.append(p.nvmlDeviceGetPowerUsage(self.handle) / 1000.0)
                except p.NVMLError as exc:
                    self._power_reason = _nvml_reason(exc)
            if self._util_reason is None:
                try:
                    self._util.append(float(p.nvmlDeviceGetUtilizationRates(self.handle).gpu))
                except p.NVMLError as exc:
                    self._util_reason = _nvml_reason(exc)
            used = self.memory_used()
            if used is not None:
                self._mem_peak = max(self._mem_peak, used)

    def stop(self, samples: int, baseline_used: int | None = None) -> dict[str, Any]:
        """Finish: power (W), energy (J) and J/sample over `samples` processed, utilisation, memory."""
        self._t1 = time.perf_counter()
        duration = self._t1 - self._t0
        if not self.available:
            na = not_available(self.reason or "no GPU")
            return {"power": na, "utilization": na, "memory": na}
        self.sample()
        p = self._pynvml
        power: dict[str, Any]
        if self._energy0 is not None:
            try:
                energy_j = (int(p.nvmlDeviceGetTotalEnergyConsumption(self.handle)) - self._energy0) / 1000.0
                power = {"available": True, "method": "total energy counter",
                         "energy_j": energy_j, "mean_w": energy_j / duration if duration > 0 else None}
            except p.NVMLError as exc:
                power = not_available(_nvml_reason(exc))
        elif self._power:
            mean_w = sum(self._power) / len(self._power)
            power = {"available": True, "method": f"mean of {len(self._power)} power samples x duration",
                     "energy_j": mean_w * duration, "mean_w": mean_w}
        else:
            power = not_available(self._energy_reason or self._power_reason or "power not reported")
        if power.get("available"):
            power["energy_per_sample_j"] = power["energy_j"] / samples if samples else None
            power["duration_s"] = duration
            if duration < MIN_POWER_WINDOW_S:
                power["note"] = (f"measured over {duration:.2f} s: NVML's energy counter and power readings update "
                                 f"about every 100 ms, so runs under {MIN_POWER_WINDOW_S:.0f} s give coarse watts "
                                 "(time with --seconds 5 or more for power)")
            if self._power:
                power["max_w"] = max(self._power)
        util = ({"available": True, "mean_pct": sum(self._util) / len(self._util), "max_pct": max(self._util),
                 "samples": len(self._util)} if self._util else not_available(self._util_reason or "no samples"))
        base = baseline_used if baseline_used is not None else self._mem0
        memory = ({"available": True, "device_used_peak_mb": self._mem_peak / MB,
                   "device_increase_mb": (self._mem_peak - base) / MB if base is not None else None,
                   "method": "NVML device memory in use (all processes)"}
                  if self._mem0 is not None else not_available(self._mem_reason or "memory not reported"))
        return {"power": power, "utilization": util, "memory": memory}

    def close(self) -> None:
        """Shut NVML down (reference-counted by the library)."""
        if self._inited:
            try:
                self._pynvml.nvmlShutdown()
            except Exception:
                pass
            self._inited = False
        self.handle = None
