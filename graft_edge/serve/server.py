"""`graft-edge serve`: graft-edge artefacts on a real Triton Inference Server, one bad request failing alone.

Each artefact becomes one Triton model (named after its file: `model.int8-static.onnx` ->
`model.int8-static`) run by graft-edge's own runtime layer (`load_embedder`) inside Triton's Python
backend, with Triton's dynamic batcher (max batch, queue delay) and N instances. Every input is optional,
and a request uses one form:
  - tensors: one float32 (3, H, W) input per modality (`rgb`, `nir`, `tir`), already normalised;
  - `image`: one encoded side-by-side image (BYTES, the RGBNT100 layout, slots in the model's modality order);
  - `<modality>_image`: one encoded image per modality (BYTES);
plus an optional float32 (M,) `present` mask (1 = that sensor is there). A modality left out counts as
missing (any non-empty subset works, see runtime.presence). Output: `embedding`, float32 (D,), L2-normalised.

Errors are per request. Triton rejects wrong shapes, dtypes and unknown inputs itself, before batching;
graft-edge checks and decodes every request of a dynamic batch on its own (serve.batching) and answers
each with its own InferenceResponse, so a request with no input, mixed forms, undecodable bytes or a
sample with no modality gets an error naming that, and the requests batched with it get their
embeddings. This is why serving runs Triton's Python backend directly: its `execute` answers request by
request, where a PyTriton inference callable can only fail its whole batch.

Readiness means loaded: models load, and answer one warm-up inference, before Triton opens its endpoints;
`/v2/health/ready` is 200 only while every model is ready, `/v2/health/live` while the server runs.
Artefacts whose embedding of a sample depends on its batch-mates (dynamic INT8; formats.py says which)
are refused unless allowed. SIGTERM (or Ctrl-C) stops accepting work and drains in-flight requests for
up to `drain_seconds`. Prometheus metrics are Triton's own.
"""
from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from graft_edge.errors import GraftError
from graft_edge.formats import batch_dependence_note
from graft_edge.runtime import load_embedder
from graft_edge.serve.options import ServeOptions
from graft_edge.serve.repository import ServedModel, write_serve_repository
from graft_edge.serve.triton_config import model_name
from graft_edge.serve.tritonserver import (
    TritonProcess,
    find_triton,
    prepare_backends,
    probe_host,
    server_args,
    server_env,
)

__all__ = ["ServeOptions", "Server", "model_name", "start", "serve_forever", "check_models"]
Log = Callable[[str], None]


def check_models(paths: Sequence[str | Path], opt: ServeOptions, log: Log = lambda m: None) -> dict[str, ServedModel]:
    """{Triton model name: artefact}; every file opened once here so a bad one fails before Triton starts.

    GraftError on an unreadable file, two files with one name, or a batch-dependent format not allowed.
    """
    models: dict[str, ServedModel] = {}
    for path in map(Path, paths):
        name = model_name(path)
        if name in models:
            raise GraftError(f"{path}: two models would be served as {name!r} (rename one of the files)")
        info = load_embedder(path, device=opt.device, threads=opt.threads).info
        note = batch_dependence_note(path, info.format, info.extra.get("precision"))
        if note and not opt.allow_batch_dependent:
            raise GraftError(f"{note}: serve one of those, or pass --allow-batch-dependent to serve it anyway")
        if note:
            log(f"warning: {note}")
        models[name] = ServedModel(path=path, info=info)
    return models


class Server:
    """A running `graft-edge serve`: Triton on its own model repository, in a private workspace folder."""

    def __init__(self, models: dict[str, ServedModel], opt: ServeOptions, log: Log) -> None:
        self.models, self.opt, self.log = models, opt, log
        dist = find_triton()
        self.workspace = Path(tempfile.mkdtemp(prefix="graft-edge-serve-"))
        try:
            repo = write_serve_repository(models, self.workspace / "models", opt)
            args = server_args(dist, repo, prepare_backends(dist, self.workspace), opt)
            self.process = TritonProcess(args, server_env(dist), sink=log, echo=opt.verbose > 0)
        except BaseException:
            shutil.rmtree(self.workspace, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        """The HTTP endpoint, as a local client reaches it."""
        return f"http://{probe_host(self.opt.host)}:{self.opt.http_port}"

    def wait_ready(self) -> None:
        """Block until every model has loaded and answered its warm-up request (GraftError if Triton exits)."""
        self.process.wait_ready(f"{self.url}/v2/health/ready", self.opt.start_timeout)
        self.process.echo = True  # after start-up, Triton's lines (shutdown, stub failures) go to the log

    def stop(self) -> int:
        """Drain in-flight requests (up to drain_seconds), stop Triton, remove the workspace; Triton's exit code."""
        try:
            return self.process.stop(self.opt.drain_seconds)
        finally:
            shutil.rmtree(self.workspace, ignore_errors=True)


def start(paths: Sequence[str | Path], opt: ServeOptions, log: Log = lambda m: None) -> Server:
    """Check the artefacts, start Triton on them and wait until it is ready; returns the Server (call .stop())."""
    opt = opt.validated()
    models = check_models(paths, opt, log)
    log(f"loading {len(models)} model(s) into Triton: {', '.join(models)}")
    server = Server(models, opt, log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    for name, model in models.items():
        log(f"serving {name!r} ({model.info.extra.get('precision', model.info.format)}, "
            f"{','.join(model.info.modalities)}; {opt.instances} instance(s))")
    return server


def serve_forever(paths: Sequence[str | Path], opt: ServeOptions, log: Log = lambda m: None) -> None:
    """Start, serve until SIGTERM/SIGINT, then drain in-flight requests and stop; GraftError if Triton dies."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    server = None
    try:
        server = start(paths, opt, log)
        log(f"ready: http {opt.host}:{opt.http_port} (/v2/health/ready, /v2/health/live), grpc {opt.host}:"
            f"{opt.grpc_port}, metrics http://{opt.host}:{opt.metrics_port}/metrics (SIGTERM or Ctrl-C drains and stops)")
        server.process.proc.wait()
        raise server.process.exited()
    except KeyboardInterrupt:
        if server is not None:
            log(f"stopping: draining in-flight requests (up to {opt.drain_seconds} s)")
    finally:
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, previous)
