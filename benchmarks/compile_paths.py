"""PyTorch 2 paths tried against the shipped runtimes: torch.compile (Inductor, frozen weights) in FP32 and under bf16
autocast, and PT2E INT8 with the x86 Inductor quantiser (torchao), timed side by side with exported artefacts.

    pip install torchao            # PT2E quantisation lives in torchao.quantization.pt2e (not a graft-edge dependency)
    python benchmarks/compile_paths.py deit/dense.pt deit/exp/model.openvino-int8.xml deit/exp/model.openvino-bf16.xml \
        --calib-data syn --threads 1 --json compile_paths.json

Each compiled path is built from the checkpoint (the ONNX export's module: one tensor per modality + the presence
mask), its compile time recorded, its worst cosine against eager FP32 taken on the timing inputs, then every path and
every artefact given is timed in one interleaved pass (graft_edge.profile.latency), with the speed-up vs eager FP32.
PT2E INT8 is calibrated on --calib-data's train split (random inputs without it). None of these paths is a format:
see benchmarks/README.md ("Speed at the limit of the CPU") for why.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable


class Compiled:
    """A compiled callable as an Embedder-like object for interleaved_latency (bind -> call)."""

    def __init__(self, fn: Callable[..., Any], inputs: tuple, autocast: bool = False) -> None:
        self.fn, self.inputs, self.autocast = fn, inputs, autocast

    def bind(self, _batch: Any) -> Callable[[], Any]:
        import torch

        def run() -> Any:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                return self.fn(*self.inputs)

        return run

    def synchronize(self) -> None:
        """Synchronous."""


def _cos(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float(((a * b).sum(1) / a.norm(dim=1) / b.norm(dim=1)).min())


def build(ckpt: Path, batch: int, calib: str | None, which: list[str]) -> tuple[dict[str, Compiled], dict[str, Any]]:
    """The compiled paths of `which` (compile, compile-bf16, pt2e-int8) and their compile times / cosines."""
    import torch
    import torch._inductor.config as inductor

    from graft_edge.checkpoint import load_model
    from graft_edge.export.onnx import wrapper_for
    from graft_edge.inputs import random_images

    model = load_model(ckpt)[0].eval()
    wrapper = wrapper_for(model)
    masked = wrapper.__class__.__name__.startswith("Masked")

    def example(b: int, seed: int = 0) -> tuple:
        x = random_images(wrapper.modalities, model.cfg.img_size, b, seed=seed)
        return tuple(torch.from_numpy(x[m]) for m in wrapper.modalities) + (
            (torch.ones(b, len(wrapper.modalities)),) if masked else ())

    ex = example(batch)
    with torch.no_grad():
        ref = wrapper(*ex)
    inductor.freezing = True  # weights folded as constants: the CPU Inductor recipe for inference
    paths: dict[str, Compiled] = {}
    facts: dict[str, Any] = {}
    for name in which:
        torch._dynamo.reset()
        t0 = time.perf_counter()
        if name == "pt2e-int8":
            fn = _pt2e(wrapper, ex, _calibration(model, wrapper, calib, example))
        else:
            fn = torch.compile(wrapper)
        autocast = name == "compile-bf16"
        path = Compiled(fn, ex, autocast)
        out = path.bind(None)()
        facts[name] = {"build_s": time.perf_counter() - t0, "cosine_vs_eager_fp32": _cos(ref, out.float())}
        paths[name] = path
        print(f"  built {name}: {facts[name]['build_s']:.0f} s, cosine {facts[name]['cosine_vs_eager_fp32']:.6f}",
              flush=True)
    return paths, facts


def _calibration(model: Any, wrapper: Any, calib: str | None, example: Callable[..., tuple]) -> list[tuple]:
    """Calibration batches: 32 train images of --calib-data in batches of 8, else 4 random batches."""
    import torch

    if not calib:
        return [example(8, seed=s) for s in range(4)]
    from graft_edge.export.calibration import load_calibration

    cfg = model.cfg
    data = load_calibration(calib, tuple(wrapper.modalities), cfg.img_size, cfg.mean, cfg.std, 32)
    n = len(next(iter(data.values())))
    out = []
    for i in range(0, n, 8):
        imgs = tuple(torch.from_numpy(data[m][i:i + 8]) for m in wrapper.modalities)
        k = imgs[0].shape[0]
        out.append(imgs + ((torch.ones(k, len(imgs)),) if len(example(1)) > len(imgs) else ()))
    return out


def _pt2e(wrapper: Any, ex: tuple, calib: list[tuple]) -> Callable[..., Any]:
    """PT2E INT8 (X86InductorQuantizer defaults: static per-tensor activations, per-channel weights) + Inductor."""
    import torch

    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        sys.exit("pt2e-int8 needs torchao (pip install torchao): torch.ao.quantization's PT2E moved there")
    exported = torch.export.export(wrapper, ex).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calib:
            prepared(*batch)
    return torch.compile(convert_pt2e(prepared))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="the dense checkpoint (eager FP32 is the reference)")
    ap.add_argument("artefacts", nargs="*", help="exported artefacts to time beside the compiled paths")
    ap.add_argument("--paths", default="compile,compile-bf16,pt2e-int8", help="compiled paths to build")
    ap.add_argument("--calib-data", default=None, help="dataset root calibrating PT2E INT8 (train split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    from graft_edge.profile.hardware import machine_info
    from graft_edge.profile.latency import interleaved_latency, synthetic_batch
    from graft_edge.profile.stats import summarize
    from graft_edge.runtime import load_embedder

    torch.set_num_threads(args.threads)
    compiled, facts = build(Path(args.checkpoint), args.batch, args.calib_data,
                            [p.strip() for p in args.paths.split(",") if p.strip()])
    embedders: dict[str, Any] = {"eager fp32": load_embedder(args.checkpoint, threads=args.threads)}
    embedders.update(compiled)
    embedders.update({Path(a).name: load_embedder(a, threads=args.threads) for a in args.artefacts})
    info = embedders["eager fp32"].info
    inputs = {k: synthetic_batch(info, args.batch) for k in embedders}
    times = interleaved_latency(embedders, inputs, rounds=args.rounds, iters_per_round=args.iters, warmup=1)
    eager = summarize(times["eager fp32"], args.batch).per_sample_ms
    rows = []
    for k, t in times.items():
        s = summarize(t, args.batch)
        rows.append({"path": k, "ms_per_sample_p50": s.per_sample_ms, "ms_per_sample_min": s.min_ms / args.batch,
                     "vs_eager_fp32": eager / s.per_sample_ms, **facts.get(k, {})})
        print(f"  {k:32s} {s.per_sample_ms:9.1f} ms/sample  {eager / s.per_sample_ms:5.2f}x eager FP32", flush=True)
    result = {"threads": args.threads, "batch": args.batch, "rows": rows, "machine": machine_info()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
