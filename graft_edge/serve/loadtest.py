"""`graft-edge loadtest`: a closed-loop concurrency sweep against a Triton server, on the loopback only.

At each concurrency level C, C client threads (each with its own tritonclient connection) send one
request, wait for its answer, and send the next, for `seconds` or until `max_requests` answers,
whichever comes first. Every request has a client-side timeout; a failed request counts as an error
(a timeout separately) and its thread backs off briefly, and a level stops early after `max_errors`
failures (a dead server must not keep the sweep busy). Reported per level: requests, errors,
timeouts, throughput (answered requests and samples per second of wall time) and latency
percentiles of the answered requests (profile.stats conventions). JSON schema graft-edge/loadtest v1.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from graft_edge.errors import GraftError, one_line
from graft_edge.fileio import atomic_write
from graft_edge.profile.hardware import machine_info
from graft_edge.profile.stats import percentile

SCHEMA = "graft-edge/loadtest"
SCHEMA_VERSION = 1
PROTOCOLS = ("grpc", "http")
BACKOFF_S = 0.05  # a failing thread waits this long before its next request


@dataclass(frozen=True)
class LoadSettings:
    """What to send and for how long (the CLI's options)."""

    target: str  # HOST:PORT of the server's gRPC or HTTP endpoint
    concurrency: tuple[int, ...] = (1, 4, 16)
    seconds: float = 15.0  # per level
    max_requests: int = 100_000  # per level
    protocol: str = "grpc"
    model: str | None = None  # None: the server's only model
    batch: int = 1  # samples per request
    timeout: float = 10.0  # per request, seconds
    max_errors: int = 50  # per level, before the level stops
    modalities: tuple[str, ...] | None = None  # send only these (missing sensors); None: all

    def validated(self) -> LoadSettings:
        """Checked copy; GraftError on the first bad field."""
        loopback_target(self.target)
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise GraftError(f"--concurrency {','.join(map(str, self.concurrency))}: expected positive integers")
        if max(self.concurrency) > 256:
            raise GraftError(f"--concurrency {max(self.concurrency)}: at most 256 clients")
        if not 0 < self.seconds <= 3600:
            raise GraftError(f"--seconds {self.seconds}: expected a duration in (0, 3600]")
        if self.max_requests < 1 or self.batch < 1 or self.max_errors < 1:
            raise GraftError("--max-requests, --batch and --max-errors must be positive")
        if not self.timeout > 0:
            raise GraftError(f"--timeout {self.timeout}: expected a positive number of seconds")
        if self.protocol not in PROTOCOLS:
            raise GraftError(f"--protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        return self


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free at the time of the call (all held open together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def loopback_target(target: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port) when HOST is a loopback address; GraftError otherwise (loopback only)."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise GraftError(f"target {target!r}: expected HOST:PORT, e.g. 127.0.0.1:8001")
    host = host.strip("[]")
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        raise GraftError(f"target {target!r}: cannot resolve {host!r}") from None
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise GraftError(f"target {target!r}: loadtest only talks to this machine (127.0.0.1, ::1, localhost)")
    return host, int(port)


# ------------------------------------------------------------------------------------------ the client

class Client:
    """One tritonclient connection sending the same random request (gRPC or HTTP)."""

    def __init__(self, settings: LoadSettings, inputs: dict[str, np.ndarray], model: str) -> None:
        if settings.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self.tc, self.grpc = tc, settings.protocol == "grpc"
        self.model, self.timeout = model, settings.timeout
        kw = {} if self.grpc else {"connection_timeout": settings.timeout, "network_timeout": settings.timeout}
        self.client = tc.InferenceServerClient(settings.target, **kw)
        self.inputs = []
        for name, x in inputs.items():
            inp = tc.InferInput(name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            self.inputs.append(inp)

    def infer(self) -> np.ndarray:
        """One request; raises on any failure (tritonclient's InferenceServerException and network errors)."""
        if self.grpc:
            res = self.client.infer(self.model, self.inputs, client_timeout=self.timeout)
        else:
            res = self.client.infer(self.model, self.inputs)
        return res.as_numpy("embedding")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection must not hide the load test's result
            pass


def _is_timeout(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "deadline" in text or "timeout" in text or "timed out" in text


def model_inputs(settings: LoadSettings) -> tuple[str, dict[str, np.ndarray]]:
    """(model name, one request's float inputs) from the server's own metadata."""
    client = Client(settings, {}, "")
    as_json = {"as_json": True} if client.grpc else {}
    try:
        name = settings.model or _only_model(client, settings, as_json)
        meta = client.client.get_model_metadata(name, **as_json)
    except GraftError:
        raise
    except Exception as exc:
        raise GraftError(f"cannot query model {settings.model or ''!r} at {settings.target} ({settings.protocol}): "
                         f"{one_line(exc)}") from None
    finally:
        client.close()
    tensors = [i for i in meta["inputs"] if i["datatype"] == "FP32" and len(i["shape"]) == 4]
    if settings.modalities:
        unknown = [m for m in settings.modalities if m not in {t["name"] for t in tensors}]
        if unknown:
            raise GraftError(f"--modalities: model {name!r} has no input {unknown[0]!r}")
        tensors = [t for t in tensors if t["name"] in settings.modalities]
    if not tensors:
        raise GraftError(f"model {name!r} has no float image inputs to send")
    rng = np.random.default_rng(0)
    return name, {t["name"]: rng.standard_normal((settings.batch, *[int(d) for d in t["shape"][1:]]),
                                                   dtype=np.float32) for t in tensors}


def _only_model(client: Client, settings: LoadSettings, as_json: dict[str, Any]) -> str:
    """The name of the server's only ready model, from its model index; GraftError asking for --model otherwise."""
    try:
        index = client.client.get_model_repository_index(**as_json)
    except Exception as exc:  # a server that keeps its repository API closed (PyTriton's, by default)
        raise GraftError(f"the server at {settings.target} does not list its models ({one_line(exc)[:120]}): "
                         "pass --model NAME (graft-edge serve prints the names)") from None
    entries = index.get("models", []) if isinstance(index, dict) else index
    models = sorted({m["name"] for m in entries if m.get("state", "READY") == "READY"})
    if len(models) != 1:
        listed = ", ".join(f"{m['name']} ({m.get('state') or 'unknown state'})" for m in entries) or "none"
        raise GraftError(f"the server holds {len(models)} ready models (listed: {listed}): pick one with --model")
    return models[0]


# ------------------------------------------------------------------------------------------ the sweep

@dataclass
class LevelResult:
    """One concurrency level."""

    concurrency: int
    seconds: float
    requests: int  # answered
    errors: int  # failed (timeouts included)
    timeouts: int
    throughput_rps: float
    throughput_sps: float  # samples / s
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    first_error: str | None
    stopped_early: bool


def run_level(settings: LoadSettings, model: str, inputs: dict[str, np.ndarray], concurrency: int) -> LevelResult:
    """C closed-loop clients for `seconds` (or `max_requests` answers, or `max_errors` failures)."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    timeouts = [0]
    stop = threading.Event()
    clients = [Client(settings, inputs, model) for _ in range(concurrency)]
    deadline = time.perf_counter() + settings.seconds

    def worker(client: Client) -> None:
        while not stop.is_set() and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                client.infer()
            except Exception as exc:  # any client or server failure is a result, not a crash
                with lock:
                    errors.append(one_line(exc)[:300])
                    timeouts[0] += _is_timeout(exc)
                    if len(errors) >= settings.max_errors:
                        stop.set()
                stop.wait(BACKOFF_S)
                continue
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000.0)
                if len(latencies) >= settings.max_requests:
                    stop.set()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:  # a request can outlive the deadline by at most its timeout
        t.join(timeout=settings.seconds + settings.timeout + 5)
    wall = time.perf_counter() - started
    for c in clients:
        c.close()
    n = len(latencies)

    def pct(q: float) -> float | None:
        return percentile(latencies, q) if latencies else None

    return LevelResult(concurrency=concurrency, seconds=wall, requests=n, errors=len(errors), timeouts=timeouts[0],
                       throughput_rps=n / wall, throughput_sps=n * settings.batch / wall, p50_ms=pct(50),
                       p90_ms=pct(90), p99_ms=pct(99), mean_ms=float(np.mean(latencies)) if n else None,
                       max_ms=max(latencies) if n else None, first_error=errors[0] if errors else None,
                       stopped_early=len(errors) >= settings.max_errors)


def run_loadtest(settings: LoadSettings, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """The whole sweep as a schema-v1 dict; stops after a level whose every request failed."""
    settings = settings.validated()
    model, inputs = model_inputs(settings)
    levels = []
    for c in settings.concurrency:
        progress(f"{c} client(s) for up to {settings.seconds:g} s ...")
        level = run_level(settings, model, inputs, c)
        levels.append(level)
        if level.requests == 0 and level.errors:
            progress(f"every request failed at {c} client(s) ({level.first_error}): sweep stopped")
            break
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime()),
            "machine": machine_info(), "model": model, "inputs": {k: list(v.shape) for k, v in inputs.items()},
            "settings": {**asdict(settings), "concurrency": list(settings.concurrency),
                         "modalities": list(settings.modalities) if settings.modalities else None},
            "levels": [asdict(lv) for lv in levels],
            "ok": all(lv.errors == 0 for lv in levels) and len(levels) == len(settings.concurrency)}


def write_plot(path: str | Path, report: dict[str, Any]) -> Path:
    """Throughput (samples/s) against p99 latency, one point per concurrency level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [lv for lv in report["levels"] if lv["p99_ms"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    ax.plot([lv["p99_ms"] for lv in pts], [lv["throughput_sps"] for lv in pts], "o-")
    for lv in pts:
        ax.annotate(f"{lv['concurrency']} client(s)", (lv["p99_ms"], lv["throughput_sps"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (samples/s)")
    ax.set_title(f"{report['model']}: closed-loop load test")
    ax.grid(alpha=0.3)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def parse_concurrency(text: str | Sequence[int]) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16); GraftError on anything else."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(int(str(p).strip()) for p in parts if str(p).strip())
    except ValueError:
        raise GraftError(f"--concurrency {text!r}: expected comma-separated client counts, e.g. 1,4,16") from None
    if not values:
        raise GraftError(f"--concurrency {text!r}: expected comma-separated client counts, e.g. 1,4,16")
    return values
