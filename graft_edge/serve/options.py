"""How `graft-edge serve` listens, batches and starts (the CLI's options), checked before anything starts."""
from __future__ import annotations

from dataclasses import dataclass

from graft_edge.errors import GraftError


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
    start_timeout: float = 600.0  # seconds every model may take to load and answer its warm-up request
    allow_batch_dependent: bool = False  # serve formats whose embeddings depend on their batch-mates (dynamic INT8)
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
        if self.threads is not None and self.threads < 1:
            raise GraftError(f"--threads {self.threads}: expected a positive integer")
        if self.drain_seconds < 0:
            raise GraftError(f"--drain-seconds {self.drain_seconds}: expected 0 or more seconds")
        if not self.start_timeout > 0:
            raise GraftError(f"--start-timeout {self.start_timeout}: expected a positive number of seconds")
        return self
