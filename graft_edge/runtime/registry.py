"""Runtime families: what each runtime's artefacts are on disk and how a file opens as an Embedder.

One `RuntimeFamily` per runtime (torch, onnx, openvino, tensorrt) says which file suffixes it opens, which
companion files beside the main file belong to the artefact, whether the metadata record also lives
inside the file, where the exporter checks it, and how it is opened. The suffix table, `artefact_files`,
`read_metadata` and `load_embedder` all derive from `RUNTIMES`; the exporter stages, checks and commits
every format through them. A new runtime family is one `register(RuntimeFamily(...))`, a backend (its
Embedder) and, for the exporter, a row in `graft_edge.formats` with its builder.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from graft_edge.artefact.embedder import Embedder
from graft_edge.artefact.onnx_file import external_files, read_onnx_props, write_onnx_metadata
from graft_edge.artefact.record import FORMAT, read_sidecar
from graft_edge.cpu import cpu_model, has_bf16
from graft_edge.errors import GraftError, Unavailable
from graft_edge.formats import Format
from graft_edge.runtime import tensorrt_backend
from graft_edge.runtime.presence import SubsetEmbedder

Opener = Callable[[Path, str, "int | None", str], Embedder]  # (path, device, threads, dtype) -> Embedder


def _no_companions(path: Path) -> list[Path]:
    return []


@dataclass(frozen=True)
class RuntimeFamily:
    """One runtime and its artefacts: suffixes, companion files, embedded metadata, opener."""

    name: str  # formats.Format.runtime
    suffixes: tuple[str, ...]  # file suffixes it opens, the canonical one first
    open: Opener
    companions: Callable[[Path], list[Path]] = _no_companions  # existing files beside `path` that belong to it
    read_embedded: Callable[[Path], dict[str, Any]] | None = None  # metadata stored inside the file
    write_embedded: Callable[[Path, Mapping[str, Any]], None] | None = None
    check_device: str = "cpu"  # where the exporter runs its parity check
    exact_fp32: bool = True  # FP32 artefacts match PyTorch within --tolerance (else: judged by cosine)


def _open_torch(path: Path, device: str, threads: int | None, dtype: str) -> Embedder:
    from graft_edge.runtime.torch_backend import TorchEmbedder

    return TorchEmbedder(path, device=device, threads=threads, dtype=dtype)


def _open_onnx(path: Path, device: str, threads: int | None, dtype: str) -> Embedder:
    from graft_edge.runtime.onnx_backend import OnnxEmbedder

    return OnnxEmbedder(path, device=device, threads=threads)


def _open_openvino(path: Path, device: str, threads: int | None, dtype: str) -> Embedder:
    from graft_edge.runtime.openvino_backend import OpenVINOEmbedder

    return OpenVINOEmbedder(path, device=device, threads=threads)


def _open_tensorrt(path: Path, device: str, threads: int | None, dtype: str) -> Embedder:
    from graft_edge.runtime.tensorrt_backend import TensorRTEmbedder

    return TensorRTEmbedder(path, device=device)


def _ir_weights(path: Path) -> list[Path]:
    """An OpenVINO IR's weights: the .bin beside the .xml."""
    return [path.with_suffix(".bin")] if path.with_suffix(".bin").is_file() else []


# runtime name -> family; the backends import their optional packages lazily, so listing them costs nothing
RUNTIMES: dict[str, RuntimeFamily] = {}


def register(family: RuntimeFamily) -> RuntimeFamily:
    """Add (or replace) a runtime family; its suffixes may not be claimed by another family."""
    taken = {s: f.name for f in RUNTIMES.values() if f.name != family.name for s in f.suffixes}
    clash = [s for s in family.suffixes if s in taken]
    if clash:
        raise GraftError(f"runtime {family.name!r}: suffix {clash[0]} already belongs to {taken[clash[0]]!r}")
    RUNTIMES[family.name] = family
    return family


register(RuntimeFamily("torch", (".pt", ".pth", ".ckpt"), _open_torch))
register(RuntimeFamily("onnx", (".onnx",), _open_onnx, companions=external_files, read_embedded=read_onnx_props,
                       write_embedded=write_onnx_metadata))
register(RuntimeFamily("tensorrt", (".engine", ".plan", ".trt"), _open_tensorrt, check_device="cuda",
                       exact_fp32=False))
register(RuntimeFamily("openvino", (".xml",), _open_openvino, companions=_ir_weights))


def family_of(path: str | Path) -> RuntimeFamily:
    """The family whose suffix `path` has; GraftError listing the accepted suffixes otherwise."""
    suffix = Path(path).suffix.lower()
    for family in RUNTIMES.values():
        if suffix in family.suffixes:
            return family
    accepted = ", ".join(s for f in RUNTIMES.values() for s in f.suffixes)
    raise GraftError(f"cannot tell the format of {path}: expected a file ending in one of {accepted}")


def runtime_of(path: str | Path) -> str:
    """'torch' | 'onnx' | 'tensorrt' | 'openvino' (or a registered family) from the file suffix."""
    return family_of(path).name


def artefact_files(path: str | Path) -> list[Path]:
    """The files one artefact consists of: the file itself, then its family's companions (.onnx.data, .bin)."""
    path = Path(path)
    return [path] + [f for f in family_of(path).companions(path) if f != path]


def artefact_size(path: str | Path) -> int:
    """Bytes on disk of an artefact (the file and its companions)."""
    return sum(f.stat().st_size for f in artefact_files(path) if f.is_file())


def read_metadata(path: str | Path) -> dict[str, Any]:
    """An artefact's metadata record: inside the file where its family stores one, else (or when absent) the
    JSON sidecar; {} when there is neither."""
    path = Path(path)
    family = family_of(path)
    meta = family.read_embedded(path) if family.read_embedded is not None and path.is_file() else {}
    if meta.get("format") != FORMAT:
        meta = read_sidecar(path) or meta
    return meta


def load_embedder(path: str | Path, device: str = "cpu", threads: int | None = None,
                  modalities: str | Sequence[str] | None = None, dtype: str = "fp32") -> Embedder:
    """Open a checkpoint or exported artefact as an Embedder (restricted to `modalities` when given).

    `dtype` (fp32 | bf16) is the precision a PyTorch checkpoint runs at; an exported artefact runs at the
    precision it was exported in (its metadata says which), whatever `dtype` says.
    """
    path = Path(path)
    family = family_of(path)
    if not path.is_file():
        raise GraftError(f"model {path} does not exist")
    if threads is not None and threads < 1:
        raise GraftError(f"--threads {threads}: expected a positive integer")
    embedder = family.open(path, device, threads, dtype)
    if modalities is None:
        return embedder
    return SubsetEmbedder(embedder, modalities.split(",") if isinstance(modalities, str) else modalities)


# how to install the optional packages of the format table (graft_edge.formats needs_packages)
INSTALL = {"tensorrt": "graft-edge's trt extra (pip install tensorrt) on a machine with an NVIDIA GPU",
           "openvino": "pip install openvino", "nncf": "pip install nncf"}


def _installed(package: str) -> bool:
    if package in sys.modules:
        return sys.modules[package] is not None  # None: an import of it failed (or is blocked)
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def unavailable(fmt: Format) -> str | None:
    """Why `fmt` cannot be built and run on this machine (its packages, a GPU, native bf16), or None."""
    if fmt.runtime not in RUNTIMES:
        return f"no runtime {fmt.runtime!r} is registered"
    missing = [p for p in fmt.needs_packages if not _installed(p)]
    problems = [f"the {p} package is not installed" for p in missing]
    if fmt.needs_gpu and not tensorrt_backend.nvidia_gpu_available():
        problems.append("no NVIDIA GPU is available")
    if fmt.needs_bf16 and not has_bf16():
        problems.append(f"this CPU ({cpu_model()}) has neither AVX512-BF16 nor AMX")
    if not problems:
        return None
    hints = "; ".join(INSTALL[p] for p in missing if p in INSTALL)
    return f"{fmt.name} cannot be built here: {' and '.join(problems)}" + (f" ({hints})" if hints else "")


def check_available(fmt: Format) -> None:
    """Unavailable (one line saying what is missing) unless `fmt` can be built and run here."""
    why = unavailable(fmt)
    if why:
        raise Unavailable(why)
