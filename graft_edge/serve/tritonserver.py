"""The Triton Inference Server process behind `graft-edge serve`: the `tritonserver` the nvidia-pytriton wheel ships.

graft-edge runs the binary itself on a model repository it writes (serve.repository), with Triton's
Python backend and the wheel's stub for this interpreter's Python version. Models load at start-up
(model-control mode none) and the HTTP/gRPC endpoints open only once every model has loaded and
answered its warm-up request; with strict readiness `/v2/health/ready` is 200 only while every model is
ready. The Python-backend stub embeds this interpreter: `PATH` starts with its environment's `bin` (so
the stub finds this environment's packages) and `LD_LIBRARY_PATH` with its own libpython (a pyenv/conda
Python would otherwise pick the system's library of another patch release); the stub ignores
PYTHONPATH, so each model.py names the folder graft_edge is imported from (serve.repository).
"""
from __future__ import annotations

import collections
import os
import secrets
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from graft_edge.errors import GraftError
from graft_edge.serve.options import ServeOptions
from graft_edge.signals import die_with_parent

INSTALL_HINT = "install graft-edge's serve extra: pip install 'graft-edge[serve]' (nvidia-pytriton, tritonclient)"
STUB_HINT = ("Triton's Python stub could not load the model; with a pyenv/conda Python it links the system "
             "libpython (an error like \"'_thread.RLock' object has no attribute '_recursion_count'\"): build "
             "Python with --enable-shared so its own libpython is used, or serve from the system Python")
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
LOG_LINES = 400  # lines of Triton's output kept for error messages


@dataclass(frozen=True)
class TritonDist:
    """Where the nvidia-pytriton wheel keeps Triton: the server binary, its libraries, the Python backend."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path
    caches: Path


def find_triton() -> TritonDist:
    """The Triton the installed nvidia-pytriton wheel ships; GraftError saying how to install it or what is missing."""
    try:
        import pytriton
    except ImportError:
        raise GraftError(f"serving needs Triton: {INSTALL_HINT}") from None
    root = Path(pytriton.__file__).parent
    dist = root / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = TritonDist(binary=dist / "bin" / "tritonserver", libs=libs if libs.is_dir() else dist / "external_libs",
                       python_backend=dist / "backends" / "python",
                       stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub", caches=dist / "caches")
    if not found.stub.is_file():
        shipped = sorted(p.name for p in (dist / "python_backend_stubs").glob("*")) if dist.is_dir() else []
        raise GraftError(f"Triton's Python backend has no stub for Python {version} (the nvidia-pytriton wheel ships "
                         f"{', '.join(shipped) or 'none'}): serve from one of those Python versions")
    for path in (found.binary, *(found.python_backend / f for f in BACKEND_FILES)):
        if not path.is_file():
            raise GraftError(f"{path} is missing from the nvidia-pytriton install: reinstall it ({INSTALL_HINT})")
    return found


def python_libdir() -> str | None:
    """This interpreter's shared-libpython folder, or None when it ships none (then the system's must match it)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    shared = ldlib.endswith(".so") or ".so." in ldlib
    return libdir if libdir and shared and (Path(libdir) / ldlib).exists() else None


def prepare_backends(dist: TritonDist, workspace: Path) -> Path:
    """WORKSPACE/backends/python with the Python backend and this Python's stub (links into the wheel); the folder."""
    folder = workspace / "backends" / "python"
    folder.mkdir(parents=True, exist_ok=True)
    for src in (*(dist.python_backend / f for f in BACKEND_FILES), dist.stub):
        (folder / src.name).symlink_to(src)
    return folder.parent


def server_env(dist: TritonDist) -> dict[str, str]:
    """tritonserver's environment: this Python's environment first on PATH, its libpython first on LD_LIBRARY_PATH."""
    env = dict(os.environ)

    def prepend(key: str, *first: str | None) -> None:
        keep = [p for p in env.get(key, "").split(":") if p and p not in first]
        env[key] = ":".join([p for p in first if p] + keep)

    prepend("LD_LIBRARY_PATH", python_libdir(), str(dist.libs))
    prepend("PATH", str(Path(sys.exec_prefix) / "bin"))
    return env


def server_args(dist: TritonDist, repo: Path, backends: Path, opt: ServeOptions) -> list[str]:
    """The tritonserver command line: ports and addresses, readiness, drain time, metrics, Python-backend memory."""
    prefix = f"graft-edge-{os.getpid()}-{secrets.token_hex(4)}-"  # shared-memory names private to this server
    admin = f"graft-edge-admin={secrets.token_hex(16)}"  # nobody holds it: these APIs stay closed to clients
    gpu = str(opt.device.startswith("cuda")).lower()
    return [str(dist.binary), f"--model-repository={repo}", f"--backend-directory={backends}",
            f"--cache-directory={dist.caches}", "--model-control-mode=none", "--strict-readiness=true",
            "--exit-on-error=true", f"--exit-timeout-secs={opt.drain_seconds}",
            f"--http-address={opt.host}", f"--http-port={opt.http_port}",
            f"--grpc-address={opt.host}", f"--grpc-port={opt.grpc_port}",
            "--allow-metrics=true", f"--allow-gpu-metrics={gpu}", f"--metrics-address={opt.host}",
            f"--metrics-port={opt.metrics_port}", f"--log-verbose={opt.verbose}",
            f"--http-restricted-api=shared-memory,trace,logging:{admin}",
            f"--grpc-restricted-protocol=shared-memory,trace,logging:{admin}",
            f"--backend-config=python,shm-region-prefix-name={prefix}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=1048576"]


def probe_host(host: str) -> str:
    """The address a local client reaches a server bound to `host` at (a wildcard bind answers on the loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class TritonProcess:
    """A running tritonserver: its output (kept, and passed to `sink` once echoing is on), readiness and shutdown."""

    def __init__(self, args: list[str], env: dict[str, str], sink: Callable[[str], None], echo: bool) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.sink, self.echo = sink, echo
        parent = os.getpid()
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=lambda: die_with_parent(parent))
        self.reader = threading.Thread(target=self._read, name="tritonserver-log", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.lines.append(line)
            if self.echo:
                self.sink(line)

    def errors(self, limit: int = 6) -> str:
        """The last error lines of Triton's output, joined (its last lines when none look like errors)."""
        picked = [ln for ln in self.lines if ln[:1] == "E" or "error" in ln.lower() or "failed" in ln.lower()]
        return " | ".join((picked or list(self.lines))[-limit:])[:1500]

    def exited(self) -> GraftError:
        """The error saying that Triton exited, with its last error lines (and the stub hint where it fits)."""
        self.reader.join(timeout=5)
        text = self.errors()
        hint = f" ({STUB_HINT})" if "_recursion_count" in text or "stub" in text.lower() else ""
        return GraftError(f"Triton exited with code {self.proc.returncode}: {text}{hint}")

    def wait_ready(self, url: str, timeout: float, poll: float = 0.1) -> None:
        """Return once GET url answers 200; GraftError when Triton exits first or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while http_status(url) != 200:
            if self.proc.poll() is not None:
                raise self.exited()
            if time.monotonic() > deadline:
                raise GraftError(f"Triton was not ready after {timeout:g} s (--start-timeout): {self.errors()}")
            time.sleep(poll)

    def stop(self, drain_seconds: float) -> int:
        """SIGTERM: Triton refuses new requests and finishes in-flight ones for up to `drain_seconds`; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=drain_seconds + 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.returncode
