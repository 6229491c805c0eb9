"""bf16 for PyTorch checkpoints (--dtype) and the roofline: the model's GEMM shapes, shape-true and square GEMM peaks
per precision, FLOPs, share of peak in bench, and the per-op time breakdown (bench --profile)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from _rank_bounds import assert_within, distances, metric_bounds
from typer.testing import CliRunner

from graft_edge import cpu
from graft_edge.checkpoint import load_model
from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.evaluation import evaluate_embedder
from graft_edge.inputs import random_images
from graft_edge.model import build_model
from graft_edge.model.flops import model_flops_per_sample
from graft_edge.model.gemm_shapes import GemmShape, model_gemm_shapes, shapes_from_meta, shapes_to_meta, total_flops
from graft_edge.profile import peaks as P
from graft_edge.profile.bench import validate_bench_result
from graft_edge.runtime import load_embedder

BF16_DISTANCE_TOLERANCE = 0.05  # per query-gallery distance (unit embeddings: distances in [0, 2])
needs_bf16 = pytest.mark.skipif(not cpu.has_bf16(), reason="needs a CPU with AVX512-BF16 or AMX")


@needs_bf16
def test_bf16_autocast_is_close_to_fp32_and_evaluates(tiny_checkpoint, tmp_path):
    from graft_edge.data.synthetic import write_synthetic

    fp32 = load_embedder(tiny_checkpoint, threads=1)
    bf16 = load_embedder(tiny_checkpoint, threads=1, dtype="bf16")
    assert (fp32.info.extra["precision"], bf16.info.extra["precision"]) == ("fp32", "bf16")
    x = random_images(fp32.info.modalities, fp32.info.img_size, 4)
    a, b = fp32.embed(x), bf16.embed(x)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert b.dtype == np.float32 and cos.min() > 0.99 and not np.array_equal(a, b)  # rounded, yet close
    root = tmp_path / "syn"
    write_synthetic(root, ids=6, cameras=2, images_per_camera=2, size=(16, 32), seed=0)
    ref_dist, query, gallery = distances(fp32, root, batch_size=16)
    shift = float(np.abs(distances(bf16, root, batch_size=16)[0] - ref_dist).max())
    assert shift < BF16_DISTANCE_TOLERANCE
    # its metrics are what that shift can do to the FP32 ranking (equality would depend on the rounding's direction)
    assert_within(evaluate_embedder(bf16, root, batch_size=16), metric_bounds(ref_dist, shift, query, gallery), "bf16")


def test_dtype_errors_are_one_line(tiny_checkpoint, monkeypatch):
    with pytest.raises(GraftError, match="--dtype 'fp8': expected one of fp32, bf16"):
        load_embedder(tiny_checkpoint, dtype="fp8")
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ["avx2"])
    with pytest.raises(GraftError, match="--dtype bf16: this CPU .* neither AVX512-BF16 nor AMX"):
        load_embedder(tiny_checkpoint, dtype="bf16")
    res = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--dtype", "bf16", "--iters", "1"])
    assert res.exit_code == 2 and "neither AVX512-BF16 nor AMX" in res.output  # an option error, before any model


@pytest.fixture(autouse=True)
def peaks_measured(monkeypatch):
    """This module measures peaks (conftest turns measuring off for the rest of the suite)."""
    monkeypatch.delenv(P.PEAKS_ENV, raising=False)


@pytest.mark.parametrize("cap, hidden", [("AVX2", {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}),
                                         ("avx512_core_vnni", {"avx512_bf16", "amx_bf16", "amx_int8"}),
                                         ("AVX512_CORE_BF16", {"amx_bf16", "amx_int8"})])
def test_an_isa_cap_hides_the_features_above_it(cap, hidden, monkeypatch):
    """ONEDNN_MAX_CPU_ISA (what oneDNN, PyTorch and OpenVINO obey) makes this CPU report what a capped one has."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    full = set(cpu.cpu_flags())
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    capped = set(cpu.cpu_flags())
    assert cpu.isa_cap() == cap.upper() and capped == full - hidden
    assert not cpu.has_bf16() or cap == "AVX512_CORE_BF16"
    if cap == "AVX2":
        with pytest.raises(GraftError, match="ONEDNN_MAX_CPU_ISA=AVX2"):
            cpu.require_bf16("--dtype bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")  # no cap
    assert set(cpu.cpu_flags()) == full and cpu.allowed_x86_features("ALL") is None


def test_measured_peaks_and_the_cache(tmp_path):
    got = P.measure_peaks(threads=1, n=256, seconds=0.05)
    assert got["fp32"]["gflops"] > 0 and got["int8"]["gflops"] > 0
    assert got["fp32"]["gflops"] == max(v for v in got["fp32"]["by_runtime"].values() if isinstance(v, float))
    assert (got["bf16"]["gflops"] is not None) == cpu.has_bf16()
    cache = tmp_path / "peaks.json"
    assert P.machine_peaks(1, measure=False, cache=cache) is None and not cache.exists()
    cache.write_text(json.dumps({P._cache_key(1): got}))
    assert P.machine_peaks(1, measure=False, cache=cache) == got
    assert P.machine_peaks(2, measure=False, cache=cache) is None  # another thread count: another entry


@pytest.mark.parametrize("precision, key", [("fp32", "fp32"), ("int8-dynamic", "int8"), ("int8-static", "int8"),
                                            ("bf16", "bf16"), (None, None)])
def test_roofline_uses_the_peak_of_its_own_precision(precision, key):
    peaks = {"fp32": {"gflops": 100.0}, "bf16": {"gflops": 200.0}, "int8": {"gflops": 400.0}}
    r = P.roofline(2e9, 10.0, precision, peaks)  # 2 GFLOP in 10 ms = 200 GFLOP/s
    assert r["achieved_gflops"] == pytest.approx(200.0) and r["peak_precision"] == key
    assert r["share_of_peak"] == (pytest.approx(200.0 / peaks[key]["gflops"]) if key else None)


def _tiny_model(depth: int = 2):
    from dataclasses import replace

    from graft_edge.config import get_preset

    cfg = get_preset("synthetic").model
    cfg = replace(cfg, backbone_args={**cfg.backbone_args, "depth": depth})
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


@pytest.mark.parametrize("batch", [1, 3])
def test_gemm_shapes_are_the_models_layers(batch):
    model, cfg = _tiny_model()
    a = cfg.backbone_args
    d, depth, heads, mods = a["embed_dim"], a["depth"], a["num_heads"], len(cfg.modalities)
    patches = (cfg.img_size[0] // a["patch_size"]) * (cfg.img_size[1] // a["patch_size"])
    rows = (patches + 1) * mods * batch  # every token of every modality of the batch through one shared Linear
    hidden = int(d * a["mlp_ratio"])
    shapes = model_gemm_shapes(model, batch)
    got = {(s.m, s.k, s.n, s.batch): s.count for s in shapes}
    for k, n in ((d, 3 * d), (d, d), (d, hidden), (hidden, d)):  # qkv, proj, fc1, fc2 of every block
        assert got[(rows, k, n, 1)] == depth
    assert got[(patches * mods * batch, 3 * a["patch_size"] ** 2, d, 1)] == 1  # the patch embedding as a GEMM
    tokens, head_dim = patches + 1, d // heads
    assert got[(tokens, head_dim, tokens, heads * mods * batch)] == depth  # q @ k^T of every head
    enc = (patches + 2) * batch  # the encoders' tokens: the modality's tokens + its fusion token
    assert got[(enc, d, cfg.enc_ff, 1)] == got[(enc, cfg.enc_ff, d, 1)] == mods  # one encoder per modality
    # the FLOPs of the shapes are the model's FLOPs, and the batch-1 metadata gives the same shapes at any batch
    assert total_flops(shapes) == batch * model_flops_per_sample(model) > 0
    assert shapes_from_meta(shapes_to_meta(model_gemm_shapes(model, 1)), batch) == shapes


def test_shape_true_peak_times_the_models_shapes(tmp_path, monkeypatch):
    """Each runtime times exactly the model's distinct shapes once; the peak is their FLOPs over sum(count x time)."""
    model, _ = _tiny_model()
    shapes = model_gemm_shapes(model, 2)
    rate = {"torch": 2e9, "openvino": 5e9, "onnxruntime": 7e9}  # a fake GEMM whose speed depends on the runtime and m
    timed: list[tuple[str, str, str]] = []

    def fake(runtime, precision, shape, threads, seconds):
        timed.append((runtime, precision, shape.key()))
        return 2 * shape.m * shape.k * shape.n * shape.batch / rate[runtime] * (1 + 64 / shape.m)

    monkeypatch.setattr(P, "time_gemm", fake)
    cache = tmp_path / "times.json"
    got = P.shape_peaks(shapes, ["fp32", "int8-dynamic"], threads=1, cache=cache)
    assert sorted(timed) == sorted((rt, p, s.key()) for p in ("fp32", "int8") for rt in P.RUNTIMES[p] for s in shapes)
    for precision, best in (("fp32", "openvino"), ("int8", "onnxruntime")):
        seconds = sum(s.count * fake(best, precision, s, 1, 0) for s in shapes)
        assert got[precision]["gflops"] == pytest.approx(total_flops(shapes) / seconds / 1e9, abs=0.051)  # rounded to 0.1
    assert got["fp32"]["gflops"] < 5.0  # small-m products are slower than the runtime's square-GEMM rate
    assert got["shapes"] == len(shapes) and got["gflop"] == pytest.approx(total_flops(shapes) / 1e9)
    timed.clear()
    assert P.shape_peaks(shapes, ["fp32", "int8-dynamic"], threads=1, cache=cache) == got and not timed  # cached
    wider = model_gemm_shapes(model, 4)  # another batch: other m, timed anew
    monkeypatch.setenv(P.PEAKS_ENV, "off")
    assert P.shape_peaks(wider, ["fp32"], threads=1, cache=cache) is None and not timed  # never measured when off
    monkeypatch.delenv(P.PEAKS_ENV)
    assert P.shape_peaks(wider, ["fp32"], threads=1, cache=cache)["fp32"]["gflops"] > 0 and timed


def test_shape_true_peak_is_measured_on_every_runtime(tmp_path):
    shapes = (GemmShape(64, 96, 128, count=2), GemmShape(33, 16, 33, batch=4, scale="batch", weight=False))
    got = P.shape_peaks(shapes, ["fp32", "int8", "bf16"], threads=1, seconds=0.01, cache=tmp_path / "t.json")
    for precision in P.precisions_here():
        assert set(got[precision]["by_runtime"]) == set(P.RUNTIMES[precision])
        assert all(isinstance(v, float) and v > 0 for v in got[precision]["by_runtime"].values())
    assert ("bf16" in got) == cpu.has_bf16()


def test_bench_json_carries_dtype_flops_and_share_of_peak(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_EDGE_CACHE", str(tmp_path))
    peaks = P.measure_peaks(threads=1, n=256, seconds=0.05)
    (tmp_path / "gemm_peaks.json").write_text(json.dumps({P._cache_key(1): peaks}))
    dtype = "bf16" if cpu.has_bf16() else "fp32"
    out = tmp_path / "b.json"
    res = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--threads", "1", "--iters", "3", "--warmup", "1",
                                   "--dtype", dtype, "--batch", "1,2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert "%peak" in _table_text(doc)  # filled by default: the shape-true peaks were measured on first use
    validate_bench_result(doc)
    assert doc["settings"]["dtype"] == dtype and doc["machine"]["gemm_peaks"] == peaks
    (r,) = doc["results"]
    model = load_model(tiny_checkpoint)[0]
    assert r["precision"] == dtype and r["flops_per_sample"] == model_flops_per_sample(model)
    for run in r["runs"]:
        roof, sp = run["roofline"], run["shape_peaks"]
        assert sp["gflop"] == pytest.approx(total_flops(model_gemm_shapes(model, run["batch"])) / 1e9)
        achieved = r["flops_per_sample"] / (run["latency"]["per_sample_ms"] / 1e3) / 1e9
        assert roof["achieved_gflops"] == pytest.approx(achieved)
        assert roof["share_of_peak"] == pytest.approx(achieved / sp[dtype]["gflops"])
        assert roof["share_of_square_peak"] == pytest.approx(achieved / peaks[dtype]["gflops"])
    assert doc["results"][0]["runs"][0]["shape_peaks"] != doc["results"][0]["runs"][1]["shape_peaks"]  # per batch
    doc["results"][0]["runs"][0]["roofline"]["share_of_peak"] = -1.0
    with pytest.raises(GraftError, match="share_of_peak must be positive"):
        validate_bench_result(doc)
    monkeypatch.setenv("GRAFT_EDGE_CACHE", str(tmp_path / "empty"))
    res = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--threads", "2", "--iters", "1", "--no-peaks",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["results"][0]["runs"][0]["shape_peaks"] is None and doc["settings"]["peaks"] is False
    assert "%peak" not in _table_text(doc) and "GFLOP/s" in _table_text(doc)  # unknown: left out, not "-"s


def _table_text(doc) -> str:
    from rich.console import Console

    from graft_edge.cli.bench import bench_table

    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(bench_table(doc, width=200))
    return console.export_text()


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """A tiny checkpoint exported to ONNX FP32 and OpenVINO FP32 (no calibration needed)."""
    from dataclasses import replace

    from graft_edge.checkpoint import save_checkpoint
    from graft_edge.config import get_preset
    from graft_edge.export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("breakdown")
    model, cfg = _tiny_model()
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, model, replace(get_preset("synthetic"), model=cfg))
    export_model(ckpt, root / "exp", ExportOptions(formats=("onnx", "int8", "openvino")))
    return {"torch": ckpt, "onnx": root / "exp" / "model.onnx", "int8": root / "exp" / "model.int8-dynamic.onnx",
            "openvino": root / "exp" / "model.openvino.xml"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt, gemm_op", [("torch", "aten::addmm"), ("onnx", "MatMul"),
                                          ("int8", "DynamicQuantizeMatMul"), ("openvino", "FullyConnected")])
def test_profile_breakdown_sums_to_the_measured_time(tiny_exports, fmt, gemm_op):
    from graft_edge.profile.breakdown import GROUPS, profile_run

    path = tiny_exports[fmt]
    rec = profile_run(load_embedder(path, threads=1), path, batch=8, threads=1, calls=5)
    assert set(rec["groups"]) == set(GROUPS) and rec["groups"]["gemm"] > 0
    assert rec["profiled_ms"] == pytest.approx(sum(rec["groups"].values()))
    assert rec["profiled_ms"] == pytest.approx(sum(op["ms"] for op in rec["ops"]) + rec["groups"]["framework"])
    assert gemm_op in {op["op"] for op in rec["ops"] if op["group"] == "gemm"}
    assert sum(op["share"] for op in rec["ops"]) <= 1.0 + 1e-9
    if fmt == "openvino":  # node counters only: time between nodes is in no counter, so only an upper bound holds
        assert 0 < rec["profiled_ms"] <= 1.1 * rec["profiled_wall_ms"]
    else:  # the profiler's own top-level events (the wrapper, model_run) close the account
        assert rec["profiled_ms"] == pytest.approx(rec["profiled_wall_ms"], rel=0.10)


@pytest.mark.slow
def test_bench_profile_prints_and_records_the_breakdown(tiny_exports, tmp_path):
    out = tmp_path / "b.json"
    res = CliRunner().invoke(app, ["bench", str(tiny_exports["torch"]), str(tiny_exports["int8"]), "--threads", "1",
                                   "--iters", "2", "--warmup", "1", "--no-peaks", "--profile", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "where the time goes" in res.output and "gemm" in res.output
    doc = json.loads(out.read_text())
    validate_bench_result(doc)
    for r in doc["results"]:
        prof = r["runs"][0]["profile"]
        assert prof["runtime"] == r["format"] and prof["profiled_ms"] > 0 and prof["ops"]
    doc["results"][0]["runs"][0]["profile"]["groups"].pop("gemm")
    with pytest.raises(GraftError, match="groups must hold"):
        validate_bench_result(doc)


def test_frontier_rows_carry_their_shape_true_share(tiny_checkpoint, tmp_path, monkeypatch):
    from graft_edge.workflows.frontier import FrontierSettings, run_frontier

    monkeypatch.setenv("GRAFT_EDGE_CACHE", str(tmp_path / "cache"))
    settings = FrontierSettings(targets=("50%",), formats=("torch",), finetune_epochs=0, batch=2, iters=2, rounds=1,
                                warmup=0, threads=1)
    res = run_frontier(tiny_checkpoint, None, tmp_path / "f", settings)
    state = json.loads((tmp_path / "f" / "frontier_state.json").read_text())["latency"]
    (dense,) = [r for r in res.rows if r["variant"] == "dense"]
    (pruned,) = [r for r in res.rows if r["variant"] != "dense"]
    for r in (dense, pruned):
        peak = state["shape_peaks"][r["key"]]["fp32"]["gflops"]
        assert r["peak_gflops"] == peak and r["share_of_peak"] == pytest.approx(r["achieved_gflops"] / peak)
    # the pruned model multiplies narrower matrices: its peak is timed at its own shapes
    assert state["shape_peaks"][pruned["key"]]["gflop"] < state["shape_peaks"][dense["key"]]["gflop"]
    assert "% of peak" in (tmp_path / "f" / "frontier.md").read_text()
