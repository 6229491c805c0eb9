"""The timing loop: warm-up, then timed `embed` calls for a fixed count or a time budget.

One loop serves every format (PyTorch, ONNX Runtime, TensorRT, OpenVINO) because it only uses the
`Embedder` interface; GPU backends expose `synchronize()` and are synchronised after every timed call.
Backends with `bind(inputs)` (PyTorch, ONNX Runtime via IO binding) are timed on inputs staged on their
device once and outputs left there, so a GPU's time is not a host-copy time.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from graft_edge.artefact.embedder import Embedder, EmbedderInfo
from graft_edge.errors import GraftError
from graft_edge.inputs import random_images

DEFAULT_WARMUP = 3
DEFAULT_SECONDS = 5.0
MIN_ITERS = 5  # with --seconds: never fewer timed calls than this
MAX_ITERS = 100_000  # with --seconds: a safety stop for microsecond-fast models


def synthetic_batch(info: EmbedderInfo, batch: int, modalities: Sequence[str] | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Random normalised inputs of the embedder's shape: {modality: float32 (B, 3, H, W)}."""
    return random_images(tuple(modalities) if modalities else tuple(info.modalities), info.img_size, batch, seed)


def _sync(embedder: Any) -> Callable[[], None]:
    fn = getattr(embedder, "synchronize", None)
    return fn if callable(fn) else (lambda: None)


def bound_call(embedder: Embedder, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
    """The call that timing repeats: `embedder.bind(inputs)` where the backend offers it (inputs staged on the
    device once, the output left there: the device's time, not host copies), else `embedder.embed(inputs)`."""
    inputs = dict(inputs)
    bind = getattr(embedder, "bind", None)
    if callable(bind):
        return bind(inputs)
    return lambda: embedder.embed(inputs)


def warm_up(embedder: Embedder, inputs: Mapping[str, np.ndarray], n: int,
            on_iter: Callable[[int], None] | None = None, call: Callable[[], Any] | None = None) -> None:
    """`n` untimed calls (first calls allocate buffers, pick kernels, JIT-compile) and a synchronize."""
    if n < 0:
        raise GraftError(f"--warmup {n}: expected 0 or more")
    call = call or bound_call(embedder, inputs)
    for _ in range(n):
        call()
        if on_iter:
            on_iter(1)
    _sync(embedder)()


def time_embedder(embedder: Embedder, inputs: Mapping[str, np.ndarray], warmup: int = DEFAULT_WARMUP,
                  iters: int | None = None, seconds: float | None = None,
                  on_iter: Callable[[int], None] | None = None, call: Callable[[], Any] | None = None) -> list[float]:
    """Per-call latencies in ms of `embedder.embed(inputs)` after `warmup` untimed calls.

    Exactly one of `iters` (a count) or `seconds` (a budget of timed time; at least MIN_ITERS calls)
    applies; with neither, DEFAULT_SECONDS.  `on_iter(1)` is called after every call (progress bars).
    `call`: the bound call of these inputs when the caller already made it (`bound_call`), so inputs are
    staged on the device once per measurement, not once per call of this function.
    """
    if warmup < 0:
        raise GraftError(f"--warmup {warmup}: expected 0 or more")
    if iters is not None and seconds is not None:
        raise GraftError("give either --iters or --seconds, not both")
    if iters is not None and iters < 1:
        raise GraftError(f"--iters {iters}: expected a positive integer")
    if seconds is not None and not seconds > 0:
        raise GraftError(f"--seconds {seconds}: expected a positive number")
    if iters is None and seconds is None:
        seconds = DEFAULT_SECONDS
    sync = _sync(embedder)
    call = call or bound_call(embedder, inputs)
    warm_up(embedder, inputs, warmup, on_iter, call)
    times: list[float] = []
    spent = 0.0
    while True:
        t0 = time.perf_counter()
        call()
        sync()
        dt = time.perf_counter() - t0
        times.append(dt * 1000.0)
        spent += dt
        if on_iter:
            on_iter(1)
        if iters is not None:
            if len(times) >= iters:
                break
        elif (spent >= seconds and len(times) >= MIN_ITERS) or len(times) >= MAX_ITERS:
            break
    return times


def interleaved_latency(embedders: Mapping[str, Embedder], inputs: Mapping[str, Mapping[str, np.ndarray]],
                        rounds: int = 5, iters_per_round: int = 3, warmup: int = 2, switch_warmup: int = 1,
                        on_iter: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Time several embedders round-robin so that a change in machine load hits all of them alike.

    Each round runs, for every embedder in turn, `switch_warmup` untimed calls and then `iters_per_round`
    timed ones (after one initial warm-up of `warmup` calls each); the samples of all rounds are pooled
    per embedder.  The untimed switch-in calls keep the cost of taking over from the previous runtime
    (its OpenMP / thread-pool workers still spinning, caches holding its weights) out of the samples:
    without them, eager PyTorch at batch 1 measured 2-4x slower on a 2-core machine.  Ratios between
    the results are what a shared, noisy machine can report honestly.
    """
    if rounds < 1 or iters_per_round < 1:
        raise GraftError("rounds and iterations per round must be positive")
    if switch_warmup < 0:
        raise GraftError(f"switch-in warm-up {switch_warmup}: expected 0 or more")
    out: dict[str, list[float]] = {k: [] for k in embedders}
    calls = {key: bound_call(emb, inputs[key]) for key, emb in embedders.items()}  # inputs staged once each
    for key, emb in embedders.items():
        warm_up(emb, inputs[key], warmup, on_iter, calls[key])
    for _ in range(rounds):
        for key, emb in embedders.items():
            out[key].extend(time_embedder(emb, inputs[key], warmup=switch_warmup, iters=iters_per_round,
                                          on_iter=on_iter, call=calls[key]))
    return out
