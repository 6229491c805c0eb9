"""One GEMM shape timed on one runtime at one precision: the bricks of the roofline's peaks (graft_edge.profile.peaks).

Each timer builds the product of a `GemmShape` the way the runtime runs the model's own layers and returns the
fastest call in seconds (one untimed call first, then at least `min_calls` calls and `seconds` of calls):
  torch        fp32 / bf16: F.linear for weight products (x @ W^T, as nn.Linear), torch.bmm for activation products
  onnxruntime  int8: MatMulInteger, u8 activations x s8 weights (the kernel of dynamic INT8)
  openvino     fp32 / bf16: MatMul compiled with that INFERENCE_PRECISION_HINT; int8: MatMul behind FakeQuantize
               nodes with INT8 weights (the pattern NNCF writes; OpenVINO runs it with its INT8 kernels)
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from graft_edge.model.gemm_shapes import GemmShape

RUNTIMES = {"fp32": ("torch", "openvino"), "bf16": ("torch", "openvino"), "int8": ("onnxruntime", "openvino")}


def best_seconds(call: Callable[[], Any], seconds: float, min_calls: int = 3) -> float:
    """Fastest of repeated `call()`s after one untimed call: at least `min_calls` calls and `seconds` of calls."""
    call()
    best, spent, calls = float("inf"), 0.0, 0
    while spent < seconds or calls < min_calls:
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        best, spent, calls = min(best, dt), spent + dt, calls + 1
    return best


def _dims(s: GemmShape) -> tuple[list[int], list[int]]:
    """(left operand shape, right operand shape as (k, n)) with the batch dimension when there is one."""
    lead = [s.batch] if s.batch > 1 else []
    return lead + [s.m, s.k], lead + [s.k, s.n]


def torch_gemm(shape: GemmShape, precision: str, threads: int | None, seconds: float) -> float:
    """Seconds of one product in torch (fp32, or bf16 tensors)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        left, right = _dims(shape)
        a = torch.randn(left, generator=g).to(dtype)
        if shape.weight and shape.batch == 1:
            w = torch.randn(shape.n, shape.k, generator=g).to(dtype)
            call: Callable[[], Any] = lambda: torch.nn.functional.linear(a, w)  # noqa: E731
        else:
            b = torch.randn(right, generator=g).to(dtype)
            call = (lambda: torch.matmul(a, b))  # noqa: E731
        with torch.inference_mode():
            return best_seconds(call, seconds)
    finally:
        torch.set_num_threads(before)


def ort_int8_gemm(shape: GemmShape, threads: int | None, seconds: float) -> float:
    """Seconds of one product as ONNX Runtime's MatMulInteger (u8 x s8 -> s32)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    left, right = _dims(shape)
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, left)]
    inits = []
    if shape.weight and shape.batch == 1:
        inits.append(numpy_helper.from_array(rng.integers(-127, 127, right, dtype=np.int8), "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.INT8, right))
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "gemm", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"a": rng.integers(0, 255, left, dtype=np.uint8)}
    if not inits:
        feeds["b"] = rng.integers(-127, 127, right, dtype=np.int8)
    return best_seconds(lambda: sess.run(None, feeds), seconds)


def _fake_quantize(ops: Any, x: Any, bound: float) -> Any:
    """Symmetric 256-level FakeQuantize of `x` over [-bound, bound) (what NNCF's performance preset writes)."""
    lo, hi = np.array(-bound, np.float32), np.array(bound * 127 / 128, np.float32)
    return ops.fake_quantize(x, ops.constant(lo), ops.constant(hi), ops.constant(lo), ops.constant(hi), 256)


def _openvino_model(shape: GemmShape, precision: str, rng: np.random.Generator) -> tuple[Any, list[np.ndarray]]:
    """An OpenVINO model of one product and its inputs: FP32 weights, or INT8 weights behind FakeQuantize."""
    import openvino as ov
    import openvino.opset13 as ops

    left, right = _dims(shape)
    a = ops.parameter(left, np.float32, name="a")
    params, feeds = [a], [rng.standard_normal(left, dtype=np.float32)]
    lhs = _fake_quantize(ops, a, 4.0) if precision == "int8" else a
    if shape.weight and shape.batch == 1:
        if precision == "int8":
            w = ops.constant(rng.integers(-127, 127, (shape.n, shape.k), dtype=np.int8))
            rhs = ops.multiply(ops.convert(w, np.float32),
                               ops.constant(np.full((shape.n, 1), 0.01, dtype=np.float32)))
        else:
            rhs = ops.constant(rng.standard_normal((shape.n, shape.k), dtype=np.float32))
        return ov.Model([ops.matmul(lhs, rhs, False, True)], params), feeds
    b = ops.parameter(right, np.float32, name="b")
    params.append(b)
    feeds.append(rng.standard_normal(right, dtype=np.float32))
    rhs = _fake_quantize(ops, b, 4.0) if precision == "int8" else b
    return ov.Model([ops.matmul(lhs, rhs, False, False)], params), feeds


def openvino_gemm(shape: GemmShape, precision: str, threads: int | None, seconds: float) -> float:
    """Seconds of one product in OpenVINO's CPU plugin at `precision` (fp32 | bf16 | int8), latency hint."""
    import openvino as ov

    model, feeds = _openvino_model(shape, precision, np.random.default_rng(0))
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                              "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    inputs = dict(enumerate(feeds))
    return best_seconds(lambda: request.infer(inputs), seconds)


def time_gemm(runtime: str, precision: str, shape: GemmShape, threads: int | None, seconds: float) -> float:
    """Seconds of one product of `shape` on `runtime` at `precision` (see RUNTIMES for the pairs)."""
    if runtime == "torch":
        return torch_gemm(shape, precision, threads, seconds)
    if runtime == "onnxruntime" and precision == "int8":
        return ort_int8_gemm(shape, threads, seconds)
    if runtime == "openvino":
        return openvino_gemm(shape, precision, threads, seconds)
    raise ValueError(f"no {precision} GEMM timer for runtime {runtime!r}")
