"""bf16 for PyTorch checkpoints (--dtype) and the roofline: GEMM peaks per precision, FLOPs, share of peak in bench."""
from __future__ import annotations

import json

import numpy as np
import pytest
from _rank_bounds import assert_within, distances, metric_bounds
from typer.testing import CliRunner

from graft_edge import cpu
from graft_edge.checkpoint import load_model
from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.evaluation import evaluate_embedder
from graft_edge.inputs import random_images
from graft_edge.model.flops import model_flops_per_sample
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


def test_bench_json_carries_dtype_flops_and_share_of_peak(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_EDGE_CACHE", str(tmp_path))
    peaks = P.measure_peaks(threads=1, n=256, seconds=0.05)
    (tmp_path / "gemm_peaks.json").write_text(json.dumps({P._cache_key(1): peaks}))
    dtype = "bf16" if cpu.has_bf16() else "fp32"
    out = tmp_path / "b.json"
    res = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--threads", "1", "--iters", "3", "--warmup", "1",
                                   "--dtype", dtype, "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    validate_bench_result(doc)
    assert doc["settings"]["dtype"] == dtype and doc["machine"]["gemm_peaks"] == peaks
    (r,) = doc["results"]
    assert r["precision"] == dtype and r["flops_per_sample"] == model_flops_per_sample(load_model(tiny_checkpoint)[0])
    roof = r["runs"][0]["roofline"]
    achieved = r["flops_per_sample"] / (r["runs"][0]["latency"]["per_sample_ms"] / 1e3) / 1e9
    assert roof["achieved_gflops"] == pytest.approx(achieved)
    assert roof["share_of_peak"] == pytest.approx(achieved / peaks[dtype]["gflops"])
    doc["results"][0]["runs"][0]["roofline"]["share_of_peak"] = -1.0
    with pytest.raises(GraftError, match="share_of_peak must be positive"):
        validate_bench_result(doc)
