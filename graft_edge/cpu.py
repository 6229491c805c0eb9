"""What this CPU can do: its model name and the SIMD features inference kernels use (bf16 and INT8 need them).

A leaf module, so that both the runtimes (refusing bf16 where it would be emulated) and the
measurement layer (recording the machine) can ask.
"""
from __future__ import annotations

import platform

from graft_edge.errors import GraftError

# the flags that make bf16 matrix products native: AVX512-BF16 (Cooper Lake, Zen 4+) or AMX (Sapphire Rapids+)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX)."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def require_bf16(what: str) -> None:
    """GraftError (one line naming `what`) unless this CPU has native bf16."""
    if not has_bf16():
        raise GraftError(f"{what}: this CPU ({cpu_model()}) has neither AVX512-BF16 nor AMX, so bf16 would be "
                         "emulated and slower than fp32; use fp32 or INT8 here")
