"""`graft-edge serve`: graft-edge artefacts on a real Triton Inference Server, through PyTriton.

Each artefact becomes one Triton model (named after its file: `model.int8-dynamic.onnx` ->
`model.int8-dynamic`) run by graft-edge's own runtime layer (`load_embedder`), with Triton's dynamic
batcher (max batch, queue delay) and N instances. Every input is optional, and a request uses one form:
  - tensors: one float32 (3, H, W) input per modality (`rgb`, `nir`, `tir`), already normalised;
  - `image`: one encoded side-by-side image (BYTES, the RGBNT100 layout, slots in the model's modality order);
  - `<modality>_image`: one encoded image per modality (BYTES);
plus an optional float32 (M,) `present` mask (1 = that sensor is there). A modality left out counts as
missing (any non-empty subset works, see runtime.presence). Output: `embedding`, float32 (D,), L2-normalised.
Triton rejects wrong shapes, dtypes and unknown inputs itself; graft-edge rejects the rest (no input,
mixed forms, undecodable bytes, a sample with no modality) with one line naming it, and keeps serving.
A request graft-edge rejects fails the dynamic batch it was grouped with (PyTriton answers per batch);
well-formed requests sent again succeed. SIGTERM (or Ctrl-C) stops accepting work and drains in-flight
requests for up to `drain_seconds`. Health, readiness and Prometheus metrics are Triton's own.
"""
from __future__ import annotations

import os
import re
import signal
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from graft_edge.artefact.embedder import Embedder
from graft_edge.artefact.record import OUTPUT_NAME, PRESENCE_INPUT
from graft_edge.errors import GraftError, one_line
from graft_edge.runtime import load_embedder
from graft_edge.runtime.presence import embed_rows
from graft_edge.serve.images import ImagePreprocessor

IMAGE_INPUT = "image"  # one side-by-side encoded image
IMAGE_SUFFIX = "_image"  # <modality>_image: one encoded image per modality
INSTALL_HINT = "install graft-edge's serve extra: pip install 'graft-edge[serve]' (nvidia-pytriton, tritonclient)"


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and batches (the CLI's options)."""

    host: str = "127.0.0.1"  # address every endpoint binds to (loopback unless told otherwise)
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 64  # largest batch the dynamic batcher forms
    queue_delay_us: int = 2000  # how long a request may wait for others to batch with
    instances: int = 1  # model instances (each its own runtime session)
    device: str = "cpu"
    threads: int | None = None  # runtime threads per instance (default: the runtime's choice)
    drain_seconds: int = 30  # on SIGTERM, how long in-flight requests may take to finish
    verbose: int = 0  # Triton's log_verbose

    def validated(self) -> ServeOptions:
        """The options if usable; GraftError naming the first bad one."""
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise GraftError(f"--{name.replace('_', '-')} {port}: expected a TCP port 1-65535")
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise GraftError(f"--http-port {self.http_port}, --grpc-port {self.grpc_port} and --metrics-port "
                             f"{self.metrics_port} must differ")
        if self.max_batch < 1:
            raise GraftError(f"--max-batch {self.max_batch}: expected a positive integer")
        if self.queue_delay_us < 0:
            raise GraftError(f"--queue-delay-us {self.queue_delay_us}: expected 0 or more microseconds")
        if self.instances < 1:
            raise GraftError(f"--instances {self.instances}: expected a positive integer")
        if self.drain_seconds < 0:
            raise GraftError(f"--drain-seconds {self.drain_seconds}: expected 0 or more seconds")
        return self


def model_name(path: str | Path) -> str:
    """The Triton model name of an artefact: its file name without the last suffix, made Triton-safe."""
    stem = Path(path).name.rsplit(".", 1)[0] if "." in Path(path).name else Path(path).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "model"


def require_pytriton() -> Any:
    """The pytriton package, or GraftError saying how to install it."""
    try:
        import pytriton.triton as triton
    except ImportError:
        raise GraftError(f"serving needs PyTriton: {INSTALL_HINT}") from None
    return triton


def python_libdir_first() -> str | None:
    """Put this interpreter's own libpython directory first on LD_LIBRARY_PATH (for Triton's Python stub).

    PyTriton's Python-backend stub links `libpython3.X.so`; when the interpreter was built elsewhere (pyenv,
    conda) the system's library of another patch release is found first and the model fails to load
    (`'_thread.RLock' object has no attribute '_recursion_count'`). Returns the directory, or None when
    this interpreter ships no shared libpython (then the system's must match it).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not ldlib.endswith(".so") and ".so." not in ldlib or not (Path(libdir) / ldlib).exists():
        return None
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *current])
    return libdir


# ------------------------------------------------------------------------------------------ requests

def _rows(value: np.ndarray) -> list[bytes]:
    """A BYTES input of shape (B, 1) -> B byte strings."""
    return [bytes(v) if not isinstance(v, bytes) else v for v in np.asarray(value, dtype=object).reshape(len(value), -1)[:, 0]]


class RequestAssembler:
    """Turns one Triton request's inputs into ({modality: (B, 3, H, W)}, (B, M) presence mask or None)."""

    def __init__(self, embedder: Embedder) -> None:
        self.modalities = tuple(embedder.info.modalities)
        self.images = ImagePreprocessor(embedder.info)

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        tensors = [m for m in self.modalities if m in inputs]
        per_mod = [m for m in self.modalities if m + IMAGE_SUFFIX in inputs]
        side = IMAGE_INPUT in inputs
        forms = [f for f, used in (("tensors", tensors), ("'image'", side), ("'<modality>_image'", per_mod)) if used]
        if not forms:
            raise GraftError(f"request has no input: send float32 {', '.join(repr(m) for m in self.modalities)} "
                             f"tensors, an encoded side-by-side '{IMAGE_INPUT}', or '<modality>{IMAGE_SUFFIX}' bytes")
        if len(forms) > 1:
            raise GraftError(f"request mixes input forms ({' and '.join(forms)}): use one per request")
        present = inputs.get(PRESENCE_INPUT)
        if tensors:
            batch = {m: np.asarray(inputs[m], dtype=np.float32) for m in tensors}
        elif side:
            decoded = [self.images.side_by_side(b) for b in _rows(inputs[IMAGE_INPUT])]
            batch = {m: np.stack([d[m] for d in decoded]) for m in self.modalities}
        else:
            rows = {m: _rows(inputs[m + IMAGE_SUFFIX]) for m in per_mod}
            decoded = [self.images.per_modality({m: rows[m][i] for m in per_mod}) for i in range(len(rows[per_mod[0]]))]
            batch = {m: np.stack([d[m] for d in decoded]) for m in per_mod}
        if present is None and len(batch) < len(self.modalities):
            present = np.array([[m in batch for m in self.modalities]] * len(next(iter(batch.values()))), np.float32)
        return batch, present


def make_infer(embedder: Embedder) -> Callable[[list], list[dict[str, np.ndarray]]]:
    """The PyTriton inference callable of one model instance: a list of requests -> one response per request.

    Requests that use the same inputs are run together (one runtime call per group); a malformed one
    raises GraftError, which PyTriton returns as the error of the batch.
    """
    assemble = RequestAssembler(embedder)

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(tuple(sorted(req.data)), []).append(i)
        out: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        for idxs in groups.values():
            parts = []
            for i in idxs:
                try:
                    parts.append(assemble(dict(requests[i].data)))
                except GraftError as exc:
                    raise GraftError(f"request {i + 1} of {len(requests)} in this batch: {exc}") from None
            keys = list(parts[0][0])
            batch = {m: np.concatenate([p[0][m] for p in parts]) for m in keys}
            masks = [p[1] for p in parts]
            present = None if all(m is None for m in masks) else np.concatenate(
                [m if m is not None else np.ones((len(p[0][keys[0]]), len(assemble.modalities)), np.float32)
                 for m, p in zip(masks, parts)])
            emb = embed_rows(embedder, batch, present)
            start = 0
            for i, p in zip(idxs, parts):
                n = len(p[0][keys[0]])
                out[i] = {OUTPUT_NAME: np.ascontiguousarray(emb[start:start + n], dtype=np.float32)}
                start += n
        return out  # type: ignore[return-value]

    return infer


# ------------------------------------------------------------------------------------------ the server

def tensor_specs(embedder: Embedder) -> tuple[list[Any], list[Any]]:
    """PyTriton input and output Tensor specs of one artefact (per sample: the batch dimension is Triton's)."""
    from pytriton.model_config import Tensor

    info = embedder.info
    H, W = info.img_size
    mods = tuple(info.modalities)
    inputs = [Tensor(name=m, shape=(3, H, W), dtype=np.float32, optional=True) for m in mods]
    inputs.append(Tensor(name=IMAGE_INPUT, shape=(1,), dtype=bytes, optional=True))
    inputs += [Tensor(name=m + IMAGE_SUFFIX, shape=(1,), dtype=bytes, optional=True) for m in mods]
    inputs.append(Tensor(name=PRESENCE_INPUT, shape=(len(mods),), dtype=np.float32, optional=True))
    outputs = [Tensor(name=OUTPUT_NAME, shape=(info.embed_dim,), dtype=np.float32)]
    return inputs, outputs


def triton_config(opt: ServeOptions) -> Any:
    """PyTriton's TritonConfig: ports and addresses, metrics, drain time, strict readiness."""
    from pytriton.triton import TritonConfig

    return TritonConfig(http_address=opt.host, http_port=opt.http_port, grpc_address=opt.host,
                        grpc_port=opt.grpc_port, metrics_address=opt.host, metrics_port=opt.metrics_port,
                        allow_metrics=True, allow_gpu_metrics=opt.device.startswith("cuda"),
                        exit_timeout_secs=opt.drain_seconds, strict_readiness=True, log_verbose=opt.verbose)


def load_models(paths: Sequence[str | Path], opt: ServeOptions) -> dict[str, list[Embedder]]:
    """{Triton model name: one Embedder per instance}; GraftError on a bad file or two files with one name."""
    models: dict[str, list[Embedder]] = {}
    for path in paths:
        name = model_name(path)
        if name in models:
            raise GraftError(f"{path}: two models would be served as {name!r} (rename one of the files)")
        models[name] = [load_embedder(path, device=opt.device, threads=opt.threads) for _ in range(opt.instances)]
    return models


def bind_models(triton: Any, models: dict[str, list[Embedder]], opt: ServeOptions) -> None:
    """Bind every model to a started PyTriton Triton with the dynamic batcher and its instances."""
    from pytriton.model_config import DynamicBatcher, ModelConfig

    config = ModelConfig(batching=True, max_batch_size=opt.max_batch,
                         batcher=DynamicBatcher(max_queue_delay_microseconds=opt.queue_delay_us))
    for name, instances in models.items():
        inputs, outputs = tensor_specs(instances[0])
        triton.bind(model_name=name, infer_func=[make_infer(e) for e in instances], inputs=inputs, outputs=outputs,
                    config=config, strict=True)


STUB_HINT = ("Triton's Python stub could not load the model; with a pyenv/conda Python it links the system "
             "libpython (an error like \"'_thread.RLock' object has no attribute '_recursion_count'\"): build "
             "Python with --enable-shared so its own libpython is used, or serve from the system Python")


def start(paths: Sequence[str | Path], opt: ServeOptions, log: Callable[[str], None] = lambda m: None) -> Any:
    """Load the artefacts, start Triton and bind them; returns the running pytriton Triton (call .stop())."""
    opt = opt.validated()
    triton_mod = require_pytriton()
    models = load_models(paths, opt)
    libdir = python_libdir_first()
    log(f"libpython for Triton's Python stub: {libdir or 'the system library (no shared libpython here)'}")
    triton = triton_mod.Triton(config=triton_config(opt))
    try:
        triton.run()
        bind_models(triton, models, opt)
    except Exception as exc:  # PyTriton raises its own error types, with the server's log in the message
        triton.stop()
        text = one_line(exc)
        hint = f" ({STUB_HINT})" if "_recursion_count" in str(exc) or "stub" in str(exc).lower() else ""
        raise GraftError(f"Triton did not start: {text[:300]}{hint}") from None
    for name, instances in models.items():
        log(f"serving {name!r} ({instances[0].info.extra.get('precision', instances[0].info.format)}, "
            f"{','.join(instances[0].info.modalities)}; {opt.instances} instance(s))")
    return triton


def serve_forever(paths: Sequence[str | Path], opt: ServeOptions, log: Callable[[str], None] = lambda m: None) -> None:
    """Start, serve until SIGTERM/SIGINT, then drain in-flight requests and stop."""
    triton = start(paths, opt, log)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # pytriton's serve loop stops (and Triton drains) on KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    log(f"ready: http {opt.host}:{opt.http_port}, grpc {opt.host}:{opt.grpc_port}, "
        f"metrics http://{opt.host}:{opt.metrics_port}/metrics (SIGTERM or Ctrl-C drains and stops)")
    try:
        triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        log(f"stopping: draining in-flight requests (up to {opt.drain_seconds} s)")
        triton.stop()
        signal.signal(signal.SIGTERM, previous)
