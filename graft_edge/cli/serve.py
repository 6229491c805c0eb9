"""`graft-edge serve` and `graft-edge loadtest`: thin over graft_edge.serve."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from graft_edge.cli.common import console, err_console, guarded, write_json_output
from graft_edge.formats import batch_dependent_formats
from graft_edge.serve.loadtest import LoadSettings, parse_concurrency, run_loadtest, write_plot
from graft_edge.serve.server import ServeOptions, serve_forever

D = ServeOptions()


@guarded
def serve_cmd(
    models: List[Path] = typer.Argument(..., help="Artefacts to serve: checkpoint (.pt), ONNX (.onnx), OpenVINO IR (.xml) or TensorRT engine; each becomes a Triton model named after its file (model.int8-static.onnx -> model.int8-static)."),
    host: str = typer.Option(D.host, "--host", help="Address every endpoint binds to (default: loopback only)."),
    http_port: int = typer.Option(D.http_port, "--http-port", help="HTTP/REST port (KServe v2 API, health at /v2/health/ready)."),
    grpc_port: int = typer.Option(D.grpc_port, "--grpc-port", help="gRPC port."),
    metrics_port: int = typer.Option(D.metrics_port, "--metrics-port", help="Prometheus metrics port (/metrics)."),
    max_batch: int = typer.Option(D.max_batch, "--max-batch", help="Largest batch (samples) Triton's dynamic batcher forms.", min=1),
    queue_delay_us: int = typer.Option(D.queue_delay_us, "--queue-delay-us", help="Microseconds a request may wait in the queue for others to batch with.", min=0),
    instances: int = typer.Option(D.instances, "--instances", help="Model instances (each its own runtime session; requests run in parallel across them).", min=1),
    device: str = typer.Option(D.device, "--device", help="cpu or cuda for the runtime."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Runtime CPU threads per instance (default: the runtime's choice).", min=1),
    drain_seconds: int = typer.Option(D.drain_seconds, "--drain-seconds", help="On SIGTERM / Ctrl-C: seconds in-flight requests may take to finish.", min=0),
    start_timeout: float = typer.Option(D.start_timeout, "--start-timeout", help="Seconds every model may take to load and answer its warm-up request before serve gives up."),
    allow_batch_dependent: bool = typer.Option(False, "--allow-batch-dependent", help=f"Also serve formats whose embedding of a sample depends on its batch-mates ({', '.join(batch_dependent_formats())}), with a warning; refused otherwise."),
    verbose: int = typer.Option(0, "--verbose", help="Triton's log verbosity (0: its start-up log only when start-up fails, everything after start-up; 1 or more: all of it, at that verbosity).", min=0),
) -> None:
    """Serve artefacts on a Triton Inference Server (Triton's Python backend) with dynamic batching, until SIGTERM / Ctrl-C.

    Inputs per request (one form): float32 (3, H, W) tensors per modality, an encoded side-by-side 'image',
    or '<modality>_image' bytes; plus an optional float32 (M,) 'present' mask. Output: 'embedding' (D,).
    A malformed request gets its own error; the requests batched with it are answered. /v2/health/ready
    is 200 once every model has loaded and answered a warm-up inference; /v2/health/live while the server runs.
    """
    opt = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                       max_batch=max_batch, queue_delay_us=queue_delay_us, instances=instances,
                       device=device.strip().lower(), threads=threads, drain_seconds=drain_seconds,
                       start_timeout=start_timeout, allow_batch_dependent=allow_batch_dependent, verbose=verbose)
    err = err_console()
    serve_forever(models, opt, log=lambda msg: err.print(msg, soft_wrap=True, markup=False, emoji=False))


def loadtest_table(report: dict[str, Any]) -> Table:
    """One row per concurrency level."""
    t = Table(title=f"{report['model']}: closed loop, batch {report['settings']['batch']}, latency in ms",
              title_justify="left")
    for col in ("clients", "answered", "errors", "timeouts", "req/s", "samples/s", "p50", "p90", "p99"):
        t.add_column(col, justify="right", no_wrap=True)

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for lv in report["levels"]:
        t.add_row(str(lv["concurrency"]), str(lv["requests"]), str(lv["errors"]), str(lv["timeouts"]),
                  f"{lv['throughput_rps']:.1f}", f"{lv['throughput_sps']:.1f}", ms(lv["p50_ms"]), ms(lv["p90_ms"]),
                  ms(lv["p99_ms"]))
    return t


@guarded
def loadtest_cmd(
    target: str = typer.Argument(..., help="HOST:PORT of the server's gRPC (default) or HTTP endpoint; loopback addresses only."),
    concurrency: str = typer.Option("1,4,16", "--concurrency", help="Comma-separated numbers of concurrent closed-loop clients, one level each."),
    seconds: float = typer.Option(15.0, "--seconds", help="Seconds per concurrency level."),
    max_requests: int = typer.Option(100_000, "--max-requests", help="Answered requests after which a level stops early.", min=1),
    protocol: str = typer.Option("grpc", "--protocol", help="grpc or http (TARGET's port must be that endpoint's)."),
    model: Optional[str] = typer.Option(None, "--model", help="Triton model name (default: the server's only ready model, from its model index)."),
    batch: int = typer.Option(1, "--batch", help="Samples per request.", min=1),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds a request may take before it counts as a timeout."),
    max_errors: int = typer.Option(50, "--max-errors", help="Failed requests after which a level stops early.", min=1),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Send only these modalities (e.g. rgb,nir: the others are missing sensors)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results (schema graft-edge/loadtest v1) to this file ('-' for stdout)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a throughput-vs-p99 plot (PNG) here."),
) -> None:
    """Closed-loop load test: throughput and p50/p90/p99 latency at each concurrency level; exit 1 on any error."""
    settings = LoadSettings(target=target, concurrency=parse_concurrency(concurrency), seconds=seconds,
                            max_requests=max_requests, protocol=protocol.strip().lower(), model=model, batch=batch,
                            timeout=timeout, max_errors=max_errors,
                            modalities=tuple(m.strip() for m in modalities.split(",")) if modalities else None)
    err = err_console()
    report = run_loadtest(settings, progress=lambda msg: err.print(msg, soft_wrap=True, markup=False, emoji=False))
    out = err if json_out is not None and str(json_out) == "-" else console()
    out.print(loadtest_table(report))
    for lv in report["levels"]:
        if lv["errors"]:
            err.print(f"[bold red]error:[/] {lv['errors']} failed request(s) at {lv['concurrency']} client(s), "
                      f"first: {lv['first_error']}", soft_wrap=True, emoji=False)
    write_json_output(json_out, report)
    if plot is not None:
        write_plot(plot, report)
    if not report["ok"]:
        raise typer.Exit(1)
