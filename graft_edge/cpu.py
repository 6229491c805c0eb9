"""What this CPU can do: its model name and the SIMD features inference kernels use (bf16 and INT8 need them).

A leaf module, so that both the runtimes (refusing bf16 where it would be emulated) and the
measurement layer (recording the machine) can ask.
"""
from __future__ import annotations

import os
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


# x86 features a oneDNN ISA cap (ONEDNN_MAX_CPU_ISA, which oneDNN, PyTorch's CPU kernels and OpenVINO's CPU plugin
# obey) leaves usable, cumulative from the lowest cap up; a cap not listed here (ALL, DEFAULT, unknown) caps nothing
X86_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "fma")
_ISA_CAPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("SSE41", "AVX"), ()),
    (("AVX2",), ("avx2", "fma")),
    (("AVX2_VNNI", "AVX2_VNNI_2"), ("avx_vnni",)),
    (("AVX512_CORE",), ("avx512f",)),
    (("AVX512_CORE_VNNI",), ("avx512_vnni",)),
    (("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512"), ("avx512_bf16",)),
    (("AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16"), ("amx_bf16", "amx_int8")),
)


def isa_cap() -> str | None:
    """The oneDNN ISA cap set in the environment (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA), if any."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap and cap.strip() else None


def allowed_x86_features(cap: str | None) -> set[str] | None:
    """The x86 features usable under `cap` (None: every feature the CPU has)."""
    allowed: set[str] = set()
    for names, features in _ISA_CAPS:
        allowed.update(features)
        if cap in names:
            return allowed
    return None


def cpu_flags() -> list[str]:
    """The SIMD features that matter for inference kernels (AVX2/AVX-512/VNNI/AMX/NEON...), as far as the kernels
    may use them: a oneDNN ISA cap in the environment hides the x86 features above it (an AVX2-capped run on an
    AVX-512 machine reports and behaves as an AVX2 machine would)."""
    wanted = X86_FEATURES + ("asimd", "asimddp", "sve")
    allowed = allowed_x86_features(isa_cap())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.partition(":")[2].split())
                    return [w for w in wanted if w in have and (allowed is None or w not in X86_FEATURES
                                                               or w in allowed)]
    except OSError:
        pass
    return []


def has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX)."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def require_bf16(what: str) -> None:
    """GraftError (one line naming `what`) unless this CPU has native bf16."""
    if not has_bf16():
        capped = f" usable (ONEDNN_MAX_CPU_ISA={isa_cap()})" if isa_cap() else ""
        raise GraftError(f"{what}: this CPU ({cpu_model()}) has neither AVX512-BF16 nor AMX{capped}, so bf16 would "
                         "be emulated and slower than fp32; use fp32 or INT8 here")
