"""`graft-edge serve` on a real Triton server (the nvidia-pytriton wheel's) over the loopback, and `loadtest`.

Skipped only where nvidia-pytriton / tritonclient are not installed (graft-edge's serve extra).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _export_fixtures import make_checkpoint
from PIL import Image
from typer.testing import CliRunner

from graft_edge.cli.main import app
from graft_edge.data.transforms import PairedTransform
from graft_edge.errors import GraftError
from graft_edge.runtime import load_embedder
from graft_edge.serve.images import ImagePreprocessor
from graft_edge.serve.loadtest import LoadSettings, free_ports, loopback_target, run_loadtest
from graft_edge.serve.server import ServeOptions, model_name, start
from graft_edge.serve.tritonserver import http_status

pytest.importorskip("pytriton")
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.slow  # a Triton server starts in 5-30 s (its Python stub imports torch)

MODS = ("rgb", "nir", "tir")
ROOT = Path(__file__).resolve().parents[1]


def _serving(folder: Path, **options):
    """A tiny 3-modality checkpoint served on free loopback ports with `options`; yields (ports, local embedder,
    client) and stops the server after."""
    ckpt = make_checkpoint(folder / "tiny.pt", MODS)
    h, g, m = free_ports(3)
    triton = start([ckpt], ServeOptions(http_port=h, grpc_port=g, metrics_port=m, drain_seconds=5, **options))
    client = http.InferenceServerClient(f"127.0.0.1:{h}", network_timeout=30)
    try:
        yield {"http": h, "grpc": g, "metrics": m}, load_embedder(ckpt), client
    finally:
        client.close()
        triton.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The main server: dynamic batches of up to 8 within 1 ms."""
    yield from _serving(tmp_path_factory.mktemp("serve"), max_batch=8, queue_delay_us=1000)


def _input(mod, name: str, x: np.ndarray, dtype: str):
    inp = mod.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return inp


def _images(seed: int, n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: rng.standard_normal((n, 3, 32, 64), dtype=np.float32) for m in MODS}


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_tensor_requests_match_the_runtime(server):
    ports, local, client = server
    x = _images(1)
    res = client.infer("tiny", [_input(http, m, x[m], "FP32") for m in MODS])
    assert np.abs(res.as_numpy("embedding") - local.embed(x)).max() <= 1e-5
    # a missing sensor: only rgb and tir sent, then an explicit per-sample mask
    res = client.infer("tiny", [_input(http, m, x[m], "FP32") for m in ("rgb", "tir")])
    assert np.abs(res.as_numpy("embedding") - local.embed({"rgb": x["rgb"], "tir": x["tir"]})).max() <= 1e-5
    mask = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    res = client.infer("tiny", [_input(http, m, x[m], "FP32") for m in MODS] + [_input(http, "present", mask, "FP32")])
    got = res.as_numpy("embedding")
    assert np.abs(got[0] - local.embed({"rgb": x["rgb"][:1], "tir": x["tir"][:1]})[0]).max() <= 1e-5
    assert np.abs(got[1] - local.embed({"nir": x["nir"][1:]})[0]).max() <= 1e-5


def test_encoded_image_requests_use_the_artefacts_preprocessing(server):
    ports, local, client = server
    rng = np.random.default_rng(2)
    side = rng.integers(0, 255, size=(40, 3 * 70, 3), dtype=np.uint8)  # 3 slots of 70x40, resized to 64x32
    encoded = _jpeg(side)
    with Image.open(io.BytesIO(encoded)) as img:
        img = img.convert("RGB")
        slots = {m: img.crop((i * 70, 0, (i + 1) * 70, 40)) for i, m in enumerate(MODS)}
    t = PairedTransform((32, 64), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), train=False)
    want = local.embed({m: v.numpy()[None] for m, v in t.apply(slots, t.draw()).items()})
    res = client.infer("tiny", [_input(http, "image", np.array([[encoded]], dtype=object), "BYTES")])
    assert np.abs(res.as_numpy("embedding") - want).max() <= 1e-5
    # one image per modality, over gRPC, nir missing
    g = grpc.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
    per = {m: _jpeg(np.asarray(slots[m])) for m in ("rgb", "tir")}
    decoded = {m: Image.open(io.BytesIO(b)).convert("RGB") for m, b in per.items()}
    want = local.embed({m: v.numpy()[None] for m, v in t.apply(decoded, t.draw()).items()})
    res = g.infer("tiny", [_input(grpc, f"{m}_image", np.array([[b]], dtype=object), "BYTES") for m, b in per.items()])
    g.close()
    assert np.abs(res.as_numpy("embedding") - want).max() <= 1e-5


BAD = {
    "wrong shape": ([("rgb", np.zeros((1, 3, 16, 16), np.float32), "FP32")], "unexpected shape for input 'rgb'"),
    "wrong dtype": ([("rgb", np.zeros((1, 3, 32, 64), np.float64), "FP64")], "input 'rgb' data-type is 'FP64', but model 'tiny' expects 'FP32'"),
    "missing input": ([("present", np.ones((1, 3), np.float32), "FP32")], "request has no input"),
    "undecodable bytes": ([("image", np.array([[b"not a jpeg"]], dtype=object), "BYTES")],
                          "input 'image' does not decode as an image"),
    "unknown modality": ([("uv", np.zeros((1, 3, 32, 64), np.float32), "FP32")], "unexpected inference input 'uv'"),
    "mixed forms": ([("rgb", np.zeros((1, 3, 32, 64), np.float32), "FP32"),
                     ("image", np.array([[b"x"]], dtype=object), "BYTES")], "mixes input forms"),
    "empty mask row": ([("rgb", np.zeros((1, 3, 32, 64), np.float32), "FP32"),
                        ("present", np.zeros((1, 3), np.float32), "FP32")], "has no modality present"),
    "non-finite values": ([("rgb", np.full((1, 3, 32, 64), np.inf, np.float32), "FP32")],
                          "input 'rgb' holds NaN or infinite values"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_request_gets_an_error_naming_it_and_the_server_stays_healthy(server, kind):
    ports, local, client = server
    inputs, message = BAD[kind]
    with pytest.raises(Exception) as info:
        client.infer("tiny", [_input(http, n, x, d) for n, x, d in inputs])
    assert message in str(info.value)
    assert client.is_server_ready() and client.is_model_ready("tiny")
    x = _images(3, 1)
    res = client.infer("tiny", [_input(http, m, x[m], "FP32") for m in MODS])
    assert np.abs(res.as_numpy("embedding") - local.embed(x)).max() <= 1e-5


GROUP = 13  # the grouping server's dynamic batch runs when this many samples are queued (its delay is a minute)
# Triton batches only requests with the same inputs (and closes a batch at a request with other inputs), so a bad
# request can share a batch only with good requests of its own inputs: those kinds are sent to the grouping server
# with good requests of the same form, and the test checks that the 13 ran as one batch. The others (refused by
# Triton before batching, or with inputs no well-formed request has) are sent with 12 good ones to the main server.
NEIGHBOURS = {"undecodable bytes": "png", "empty mask row": "rgb+present", "non-finite values": "rgb"}
@pytest.fixture(scope="module")
def grouping_server(tmp_path_factory):
    """A server whose dynamic batch runs exactly when 13 samples are queued; (ports, local embedder, client)."""
    yield from _serving(tmp_path_factory.mktemp("grouping"), max_batch=GROUP, queue_delay_us=60_000_000)


def _good_request(form: str, seed: int) -> tuple[list[tuple[str, np.ndarray, str]], dict[str, np.ndarray]]:
    """(request inputs, what the runtime takes offline) of one well-formed request of `form`."""
    rng = np.random.default_rng(seed)
    if form == "png":
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, size=(40, 210, 3), dtype=np.uint8)).save(buf, format="PNG")
        return [("image", np.array([[buf.getvalue()]], dtype=object), "BYTES")], {"png": buf.getvalue()}
    x = rng.standard_normal((1, 3, 32, 64), dtype=np.float32)
    if form == "rgb":
        return [("rgb", x, "FP32")], {"rgb": x}
    mask = np.array([[1, 0, 0]], np.float32)  # rgb+present: an explicit mask saying only rgb is there
    return [("rgb", x, "FP32"), ("present", mask, "FP32")], {"rgb": x}


def _send_together(port: int, requests: list[list[tuple[str, np.ndarray, str]]]) -> list:
    """Send every request at once, one gRPC client per request; each result or the exception it raised."""
    results: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def one(i: int) -> None:
        client = grpc.InferenceServerClient(f"127.0.0.1:{port}")
        inputs = [_input(grpc, n, x, d) for n, x, d in requests[i]]
        barrier.wait()
        try:
            results[i] = client.infer("tiny", inputs, client_timeout=120).as_numpy("embedding")
        except Exception as exc:  # the result under test
            results[i] = exc
        client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return results


def _batches_of(client, size: int, at_least: int = 0, limit: float = 60) -> int:
    """Executed batches of `size` samples, polled until there are `at_least` (Triton counts a batch just after
    answering it)."""
    deadline = time.time() + limit
    while True:
        stats = client.get_inference_statistics("tiny")["model_stats"][0]
        n = sum(int(b["compute_infer"]["count"]) for b in stats["batch_stats"] if int(b["batch_size"]) == size)
        if n >= at_least or time.time() > deadline:
            return n
        time.sleep(0.02)


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_request_fails_alone_in_its_dynamic_batch(request, kind):
    """12 good requests and 1 bad sent at once, within one queue delay: the good ones get their offline embedding."""
    batched = kind in NEIGHBOURS
    ports, local, client = request.getfixturevalue("grouping_server" if batched else "server")
    bad, message = BAD[kind]
    pre = ImagePreprocessor(local.info)
    for round_ in range(3):
        good = [_good_request(NEIGHBOURS.get(kind, "rgb"), 100 * round_ + i) for i in range(12)]
        before = _batches_of(client, GROUP)
        results = _send_together(ports["grpc"], [g[0] for g in good] + [bad])
        assert isinstance(results[-1], Exception) and message in str(results[-1]), results[-1]
        for (_, offline), got in zip(good, results[:-1]):
            assert isinstance(got, np.ndarray), got
            if "png" in offline:
                offline = {m: x[None] for m, x in pre.side_by_side(offline["png"]).items()}
            want = local.embed(offline)[0]
            assert float(got[0] @ want / np.linalg.norm(got[0]) / np.linalg.norm(want)) >= 0.9999
        if batched:  # the 12 good and the bad one ran as one batch
            assert _batches_of(client, GROUP, at_least=before + 1) == before + 1


def test_health_and_prometheus_metrics_come_from_triton(server):
    import urllib.request

    ports, _, client = server
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as r:
        text = r.read().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("nv_inference_request_success{") and "tiny" in ln)
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_loadtest_cli_reports_numbers(server, tmp_path):
    ports, _, _ = server
    res = CliRunner().invoke(app, ["loadtest", f"127.0.0.1:{ports['grpc']}", "--concurrency", "1,3",
                                   "--seconds", "1.5", "--json", str(tmp_path / "lt.json"), "--plot",
                                   str(tmp_path / "lt.png")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "lt.json").read_text())
    assert rep["model"] == "tiny"  # found by itself: the server's only model
    assert rep["schema"] == "graft-edge/loadtest" and rep["ok"] and [lv["concurrency"] for lv in rep["levels"]] == [1, 3]
    for lv in rep["levels"]:
        assert lv["errors"] == 0 and lv["requests"] > 0 and 0 < lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"]
        assert abs(lv["throughput_rps"] - lv["requests"] / lv["seconds"]) < 1e-6
        assert lv["seconds"] < 1.5 + 10
    assert (tmp_path / "lt.png").stat().st_size > 1000


def test_loadtest_refuses_other_hosts():
    with pytest.raises(GraftError, match="loadtest only talks to this machine"):
        loopback_target("8.8.8.8:8001")
    with pytest.raises(GraftError, match="expected HOST:PORT"):
        loopback_target("localhost")
    assert loopback_target("localhost:8001") == ("localhost", 8001)


def _serve_process(ckpt: Path | list[Path], ports: list[int], *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    models = [str(c) for c in (ckpt if isinstance(ckpt, list) else [ckpt])]
    cmd = [sys.executable, "-m", "graft_edge", "serve", *models, "--http-port", str(ports[0]), "--grpc-port",
           str(ports[1]), "--metrics-port", str(ports[2]), *extra]
    # run from elsewhere: Triton's stub must import this tree's graft_edge without the working folder's help
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=ckpt[0].parent if isinstance(ckpt, list) else ckpt.parent)


def _wait_ready(port: int, proc: subprocess.Popen, limit: float = 90) -> None:
    client = http.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        try:
            if client.is_server_ready() and client.is_model_ready("tiny"):
                client.close()
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError("server did not become ready")


def _metric(port: int, name: str, model: str = "tiny") -> float:
    """The value of one of Triton's per-model Prometheus metrics (0 when the server does not list it yet)."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(rf'^{name}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _wait_metric(port: int, name: str, at_least: float, proc: subprocess.Popen, limit: float = 60) -> None:
    """Poll a Triton metric until it reaches `at_least` (the server's own view of what it is doing)."""
    deadline = time.monotonic() + limit
    while _metric(port, name) < at_least:
        assert proc.poll() is None and time.monotonic() < deadline, f"{name} never reached {at_least}"
        time.sleep(0.05)


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_ready_only_once_every_model_has_answered_an_inference(tmp_path):
    """Poll /v2/health/ready from the moment serve starts: at its first 200 every model has answered and answers."""
    first = make_checkpoint(tmp_path / "tiny.pt", MODS)
    second = Path(shutil.copyfile(first, tmp_path / "tiny2.pt"))
    ports = free_ports(3)
    proc = _serve_process([first, second], ports)
    url = f"http://127.0.0.1:{ports[0]}/v2/health"
    try:
        seen = []
        deadline = time.time() + 240
        while not seen or seen[-1] != 200:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
            seen.append(http_status(f"{url}/ready", timeout=2))
            time.sleep(0.02)  # the polling interval: readiness itself is read from the server
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        stats = {s["name"]: s["inference_count"] for s in client.get_inference_statistics()["model_stats"]}
        assert stats == {"tiny": 1, "tiny2": 1}  # each model's warm-up inference, before ready
        x = _images(11, 1)
        want = load_embedder(first).embed(x)
        for name in ("tiny", "tiny2"):
            res = client.infer(name, [_input(http, m, x[m], "FP32") for m in MODS])
            assert np.abs(res.as_numpy("embedding") - want).max() <= 1e-5
        assert http_status(f"{url}/live") == 200 and 200 not in seen[:-1]
        client.close()
        with pytest.raises(GraftError, match="holds 2 ready models"):  # loadtest finds a model only when there is one
            run_loadtest(LoadSettings(target=f"127.0.0.1:{ports[1]}", concurrency=(1,), seconds=1))
    finally:
        _end(proc)


def test_sigterm_drains_in_flight_requests(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.pt", MODS)
    ports = free_ports(3)
    proc = _serve_process(ckpt, ports, "--queue-delay-us", "1500000", "--max-batch", "8", "--drain-seconds", "20")
    try:
        _wait_ready(ports[0], proc)
        x = _images(4, 1)
        got: dict = {}

        def request() -> None:
            c = grpc.InferenceServerClient(f"127.0.0.1:{ports[1]}")
            try:
                got["emb"] = c.infer("tiny", [_input(grpc, m, x[m], "FP32") for m in MODS], client_timeout=30)
            except Exception as exc:  # recorded for the assertion below
                got["error"] = str(exc)
            c.close()

        t = threading.Thread(target=request)
        t.start()
        _wait_metric(ports[2], "nv_inference_pending_request_count", 1, proc)  # waiting in the batcher's queue
        proc.send_signal(signal.SIGTERM)  # to the serve process, as docker stop / kubernetes do
        t.join(timeout=40)
        assert "emb" in got, got
        assert np.abs(got["emb"].as_numpy("embedding") - load_embedder(ckpt).embed(x)).max() <= 1e-5
        assert proc.wait(timeout=40) == 0
    finally:
        _end(proc)


def test_killing_the_server_mid_load_fails_the_loadtest_in_time(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.pt", MODS)
    ports = free_ports(3)
    proc = _serve_process(ckpt, ports)
    killer = None
    try:
        _wait_ready(ports[0], proc)
        # readiness follows a warm-up inference, which the success counter already holds (+1: one more in case it
        # had not been counted yet): kill once the load test's own requests are being answered
        served = _metric(ports[2], "nv_inference_request_success") + 2

        def kill_once_serving() -> None:  # the server answered a request of the load test: kill it mid-load
            try:
                _wait_metric(ports[2], "nv_inference_request_success", served, proc)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_serving)
        killer.start()
        started = time.time()
        rep = run_loadtest(LoadSettings(target=f"127.0.0.1:{ports[1]}", model="tiny", concurrency=(2, 4),
                                        seconds=20, timeout=5, max_errors=20))
        took = time.time() - started
        assert not rep["ok"] and rep["levels"][0]["requests"] > 0 and rep["levels"][0]["errors"] > 0
        assert rep["levels"][0]["stopped_early"] and took < 20 + 5 + 10
        assert len(rep["levels"]) == 2 and rep["levels"][1]["requests"] == 0  # the sweep stops at the dead server
    finally:
        if killer is not None:
            killer.join(timeout=90)
        _end(proc)


def test_serve_options_and_names_are_checked():
    assert model_name("out/model.int8-dynamic.onnx") == "model.int8-dynamic" and model_name("best.pt") == "best"
    with pytest.raises(GraftError, match="must differ"):
        ServeOptions(http_port=8000, grpc_port=8000).validated()
    with pytest.raises(GraftError, match="--instances 0"):
        ServeOptions(instances=0).validated()


def test_free_ports_are_distinct_and_bindable() -> None:
    import socket

    ports = free_ports(3)
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)
    for port in ports:  # released: a server can take each of them
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
