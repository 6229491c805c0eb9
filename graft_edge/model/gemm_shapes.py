"""The matrix products a GraFT model's inference pass runs, as GEMM shapes: what a shape-true roofline times.

A 2048^3 GEMM is a best case; the model multiplies (tokens x modalities x batch) x in x out per Linear, small
batched products in attention and an implicit GEMM in the patch embedding. `model_gemm_shapes` records them by
running the model under a dispatch mode (their FLOPs are the model's FLOPs: `model.flops.count_flops` sums them),
merges identical shapes with a count, and notes how each grows with the batch
(counted at batch 1 and 2), so an exported artefact can carry them in its metadata and any batch can be derived.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from graft_edge.errors import GraftError
from graft_edge.inputs import random_images

SCALES = ("m", "batch", "none")  # which dimension of a GEMM grows with the model's batch


@dataclass(frozen=True)
class GemmShape:
    """`count` products of `batch` independent (m x k) @ (k x n) matrices; `scale`: what grows with the batch."""

    m: int
    k: int
    n: int
    batch: int = 1
    count: int = 1
    scale: str = "m"
    weight: bool = True  # the right operand is a constant weight (Linear, conv), not an activation (attention)

    @property
    def flops(self) -> int:
        """FLOPs of all `count` products (2 per multiply-add)."""
        return 2 * self.m * self.k * self.n * self.batch * self.count

    def key(self) -> str:
        """'BxMxKxN' plus 'a' when both operands are activations: the identity of one product's timing."""
        return f"{self.batch}x{self.m}x{self.k}x{self.n}" + ("" if self.weight else "a")

    def at_batch(self, factor: int) -> GemmShape:
        """The same product for a model batch `factor` times the one it was counted at."""
        if self.scale == "m":
            return _replace(self, m=self.m * factor)
        if self.scale == "batch":
            return _replace(self, batch=self.batch * factor)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The metadata record of one shape."""
        return {"m": self.m, "k": self.k, "n": self.n, "batch": self.batch, "count": self.count, "scale": self.scale,
                "weight": self.weight}


def _replace(s: GemmShape, **changes: int) -> GemmShape:
    d = s.to_dict()
    d.update(changes)
    return GemmShape(**d)


def _rows(x: torch.Tensor) -> int:
    """Rows of a Linear's input: every leading dimension flattened."""
    out = 1
    for d in x.shape[:-1]:
        out *= int(d)
    return out


def _gemms_of(name: str, args: Sequence[Any]) -> list[GemmShape]:
    """The GEMMs of one aten call (empty for element-wise work)."""
    t = [a for a in args if isinstance(a, torch.Tensor)]
    if name == "linear":
        return [GemmShape(_rows(t[0]), int(t[1].shape[1]), int(t[1].shape[0]))]
    if name in ("mm", "addmm"):
        a, b = (t[1], t[2]) if name == "addmm" else (t[0], t[1])
        return [GemmShape(int(a.shape[0]), int(a.shape[1]), int(b.shape[1]), weight=False)]
    if name in ("bmm", "baddbmm"):
        a, b = (t[1], t[2]) if name == "baddbmm" else (t[0], t[1])
        return [GemmShape(int(a.shape[1]), int(a.shape[2]), int(b.shape[2]), batch=int(a.shape[0]), weight=False)]
    if name in ("conv2d", "convolution"):
        x, w = t[0], t[1]
        groups = int(args[6] if name == "conv2d" and len(args) > 6 else args[8] if len(args) > 8 else 1)
        out = torch.nn.functional.conv2d(torch.empty(x.shape, device="meta"), torch.empty(w.shape, device="meta"),
                                         stride=args[3] if len(args) > 3 else 1, padding=args[4] if len(args) > 4 else 0,
                                         dilation=args[5] if len(args) > 5 else 1, groups=groups)
        return [GemmShape(int(out.shape[0] * out.shape[2] * out.shape[3]), int(w.shape[1] * w.shape[2] * w.shape[3]),
                          int(w.shape[0]) // groups, batch=groups)]
    if name == "scaled_dot_product_attention":
        q, k, v = t[0], t[1], t[2]
        heads = _rows(q[..., 0])  # every dimension before (L, E)
        lq, e, s, ev = int(q.shape[-2]), int(q.shape[-1]), int(k.shape[-2]), int(v.shape[-1])
        return [GemmShape(lq, e, s, batch=heads, weight=False), GemmShape(lq, s, ev, batch=heads, weight=False)]
    return []


class _Recorder(TorchDispatchMode):
    """Records the GEMMs of every aten call, in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.gemms: list[GemmShape] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.gemms += _gemms_of(func.overloadpacket.__name__, args)
        return func(*args, **(kwargs or {}))


def record_gemms(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[GemmShape]:
    """Every GEMM of `model.embed(inputs)` (or `model(inputs)`) in call order, one entry per call."""
    fn = getattr(model, "embed", model)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder-layer kernel hides its GEMMs
    try:
        with torch.inference_mode(), _Recorder() as rec:
            fn(dict(inputs))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return rec.gemms


def _scale_of(one: GemmShape, two: GemmShape) -> str:
    """How a GEMM counted at batch 1 (`one`) and 2 (`two`) grows with the batch."""
    if (one.m, one.k, one.n, one.batch) == (two.m, two.k, two.n, two.batch):
        return "none"
    if (one.k, one.n, one.batch) == (two.k, two.n, two.batch) and two.m == 2 * one.m:
        return "m"
    if (one.m, one.k, one.n) == (two.m, two.k, two.n) and two.batch == 2 * one.batch:
        return "batch"
    raise GraftError(f"cannot tell how the GEMM {one.key()} grows with the batch (at batch 2: {two.key()})")


def merge(shapes: Iterable[GemmShape]) -> tuple[GemmShape, ...]:
    """Identical products merged into one shape with their summed count, in first-seen order."""
    out: dict[tuple[Any, ...], GemmShape] = {}
    for s in shapes:
        ident = (s.m, s.k, s.n, s.batch, s.scale, s.weight)
        out[ident] = _replace(out[ident], count=out[ident].count + s.count) if ident in out else s
    return tuple(out.values())


def model_gemm_shapes(model: torch.nn.Module, batch: int = 1) -> tuple[GemmShape, ...]:
    """The merged GEMM shapes of a GraFT model at `batch` (random inputs of its configured size, all modalities)."""
    cfg = model.cfg
    device = next(model.parameters()).device

    def run(b: int) -> list[GemmShape]:
        x = {m: torch.from_numpy(a).to(device) for m, a in random_images(cfg.modalities, cfg.img_size, b).items()}
        return record_gemms(model, x)

    one, two = run(1), run(2)
    if len(one) != len(two):
        raise GraftError(f"the model runs {len(one)} GEMMs at batch 1 but {len(two)} at batch 2")
    scaled = [_replace_scale(a, _scale_of(a, b)) for a, b in zip(one, two)]
    return tuple(s.at_batch(batch) for s in merge(scaled))


def _replace_scale(s: GemmShape, scale: str) -> GemmShape:
    return GemmShape(s.m, s.k, s.n, s.batch, s.count, scale, s.weight)


def shapes_to_meta(shapes: Sequence[GemmShape]) -> list[dict[str, Any]]:
    """Shapes at batch 1 as JSON-able records (an artefact's `gemm_shapes` metadata)."""
    return [s.to_dict() for s in shapes]


def shapes_from_meta(records: Sequence[Mapping[str, Any]] | None, batch: int = 1) -> tuple[GemmShape, ...] | None:
    """Shapes at `batch` from an artefact's `gemm_shapes` metadata (recorded at batch 1); None when absent or bad."""
    if not records:
        return None
    try:
        shapes = [GemmShape(int(r["m"]), int(r["k"]), int(r["n"]), int(r.get("batch", 1)), int(r.get("count", 1)),
                            str(r.get("scale", "m")), bool(r.get("weight", True))) for r in records]
    except (KeyError, TypeError, ValueError):
        return None
    if any(s.scale not in SCALES for s in shapes):
        return None
    return tuple(s.at_batch(batch) for s in shapes)


def total_flops(shapes: Iterable[GemmShape]) -> int:
    """FLOPs of every product in `shapes`."""
    return sum(s.flops for s in shapes)
