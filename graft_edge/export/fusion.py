"""Fused-attention ONNX: every self-attention of GraFT as one ONNX Runtime contrib node.

Neither torch exporter writes attention in a shape ONNX Runtime's transformer optimizer recognises
(it fuses 0 Attention nodes on GraFT), so this module fuses it at export time instead. A copy of the model
has each self-attention replaced by a module that calls a torch custom op; the dynamo exporter
translates that op (custom_translation_table) straight into `com.microsoft::MultiHeadAttention` (default)
or `com.microsoft::Attention`:

- timm ViT blocks (`Attention`: packed qkv Linear, `num_heads`, `scale`; structured pruning may leave the
  qkv width != the embedding width, and head-dim pruning folds its temperature into q, so the module's own
  `scale` is used), and
- the fusion encoders (`nn.TransformerEncoderLayer`, batch_first, post- or pre-norm).

`MultiHeadAttention` takes q, k and v split from the output of the qkv Linear, which stays a plain MatMul + Add: dynamic and
static INT8 (Q/DQ, S8S8 or U8S8) quantise it like any linear layer. `Attention` folds the qkv projection into
the node; ONNX Runtime's dynamic quantiser turns it into `QAttention`, but static Q/DQ leaves it FP32.
The presence mask (missing sensors) acts after the encoders, on the fusion tokens, so no attention needs a
mask and the fused graph keeps the `present` input unchanged.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from graft_edge.errors import GraftError
from graft_edge.export.onnx import DEFAULT_OPSET, export_onnx

ATTENTION_OPS = ("MultiHeadAttention", "Attention")
DEFAULT_ATTENTION_OP = "MultiHeadAttention"
MS_DOMAIN = "com.microsoft"


# ------------------------------------------------------------------------------------------ custom ops

@torch.library.custom_op("graft_edge::attention_qkv", mutates_args=())
def attention_qkv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int,
                  scale: float) -> torch.Tensor:
    """ORT `Attention`: x (B, S, Din) @ weight (Din, 3*N*H) + bias -> q|k|v -> softmax(q.k^T * scale).v (B, S, N*H)."""
    width = weight.shape[1] // 3
    qkv = torch.matmul(x, weight) + bias
    return _sdpa(*(t.unflatten(-1, (num_heads, -1)) for t in qkv.split(width, dim=-1)), scale)


@attention_qkv.register_fake
def _(x, weight, bias, num_heads, scale):
    return x.new_empty(x.shape[0], x.shape[1], weight.shape[1] // 3)


@torch.library.custom_op("graft_edge::attention_mha", mutates_args=())
def attention_mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """ORT `MultiHeadAttention` on projected q, k, v (B, S, N*H) each -> softmax(q.k^T * scale).v (B, S, N*H)."""
    return _sdpa(*(t.unflatten(-1, (num_heads, -1)) for t in (q, k, v)), scale)


@attention_mha.register_fake
def _(q, k, v, num_heads, scale):
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, S, N, H) each -> (B, S, N*H)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2).flatten(2)


def _schema(name: str, inputs: tuple[str, ...]):
    """A minimal ONNX schema of an ORT contrib op, so the exporter can build its node (1 output, float)."""
    from onnx import defs

    params = [defs.OpSchema.FormalParameter(n, "T", param_option=defs.OpSchema.FormalParameterOption.Single
                                            if i == 0 else defs.OpSchema.FormalParameterOption.Optional)
              for i, n in enumerate(inputs)]
    attrs = [defs.OpSchema.Attribute("num_heads", defs.OpSchema.AttrType.INT, required=True),
             defs.OpSchema.Attribute("scale", defs.OpSchema.AttrType.FLOAT, required=False)]
    return defs.OpSchema(name, MS_DOMAIN, 1, inputs=params, outputs=[defs.OpSchema.FormalParameter("output", "T")],
                         type_constraints=[("T", ["tensor(float)"], "float")], attributes=attrs)


@contextlib.contextmanager
def contrib_schemas() -> Iterator[None]:
    """Register the two contrib schemas with onnx for the export only (onnx itself knows none of ORT's ops)."""
    from onnx import defs

    added = []
    for name, inputs in (("Attention", ("input", "weights", "bias")), ("MultiHeadAttention", ("query", "key", "value"))):
        if not defs.has(name, MS_DOMAIN):
            defs.register_schema(_schema(name, inputs))
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            defs.deregister_schema(name, 1, MS_DOMAIN)


def translation_table() -> dict:
    """custom_translation_table for torch.onnx.export: the custom ops -> ORT contrib nodes (onnxscript)."""
    from graft_edge.export.attention_onnx import attention_onnx, mha_onnx

    return {torch.ops.graft_edge.attention_qkv.default: attention_onnx,
            torch.ops.graft_edge.attention_mha.default: mha_onnx}


# ------------------------------------------------------------------------------------------ modules

class FusedSelfAttention(nn.Module):
    """Self-attention with a packed q|k|v projection (torch layout: rows q, then k, then v) as one fused op."""

    def __init__(self, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None, proj: nn.Module, num_heads: int,
                 scale: float, op: str = DEFAULT_ATTENTION_OP) -> None:
        super().__init__()
        rows, _ = qkv_weight.shape
        if rows % (3 * num_heads):
            raise GraftError(f"fused attention: qkv width {rows} is not 3 x num_heads ({num_heads}) x head size")
        self.num_heads, self.head_dim, self.scale, self.op = int(num_heads), rows // (3 * num_heads), float(scale), op
        bias = qkv_bias.detach() if qkv_bias is not None else qkv_weight.new_zeros(rows)
        if op == "Attention":  # ORT layout: (Din, 3*N*H)
            self.weight = nn.Parameter(qkv_weight.detach().t().contiguous(), requires_grad=False)
            self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        else:  # the q|k|v projection stays a Linear (quantised like any other), then split into q, k, v
            self.qkv = nn.Linear(qkv_weight.shape[1], rows)
            with torch.no_grad():
                self.qkv.weight.copy_(qkv_weight.detach())
                self.qkv.bias.copy_(bias)
        self.proj = proj

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise GraftError("fused attention export: masked or causal attention is not supported")
        if self.op == "Attention":
            out = attention_qkv(x, self.weight, self.bias, self.num_heads, self.scale)
        else:
            out = attention_mha(*self.qkv(x).chunk(3, dim=-1), self.num_heads, self.scale)
        return self.proj(out)


class FusedEncoderLayer(nn.Module):
    """`nn.TransformerEncoderLayer` (batch_first, no mask) with its self-attention fused; same maths, eval only."""

    def __init__(self, layer: nn.TransformerEncoderLayer, op: str) -> None:
        super().__init__()
        mha = layer.self_attn
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_weight is not None):
            raise GraftError("fused attention export: encoder layers need batch_first with packed in_proj weights")
        self.attn = FusedSelfAttention(mha.in_proj_weight, mha.in_proj_bias, mha.out_proj, mha.num_heads,
                                       mha.head_dim ** -0.5, op)
        self.linear1, self.linear2, self.norm1, self.norm2 = layer.linear1, layer.linear2, layer.norm1, layer.norm2
        self.activation, self.norm_first = layer.activation, layer.norm_first

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if src_mask is not None or src_key_padding_mask is not None:
            raise GraftError("fused attention export: encoder masks are not supported")
        x = src
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self._ff(x))

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation(self.linear1(x)))


def _timm_attention(module: nn.Module) -> bool:
    """A timm ViT `Attention` this module can fuse: packed qkv Linear, no q/k norm, no gate, no output norm."""
    return (type(module).__name__ == "Attention" and isinstance(getattr(module, "qkv", None), nn.Linear)
            and isinstance(getattr(module, "proj", None), nn.Linear) and hasattr(module, "num_heads")
            and getattr(module, "gate", None) is None
            and all(isinstance(getattr(module, a, nn.Identity()), nn.Identity) for a in ("q_norm", "k_norm", "norm")))


def fused_copy(model: nn.Module, op: str = DEFAULT_ATTENTION_OP) -> tuple[nn.Module, int]:
    """(a deep copy of `model` with every self-attention fused, how many were fused); GraftError if none was."""
    if op not in ATTENTION_OPS:
        raise GraftError(f"fused attention op {op!r}: expected one of {', '.join(ATTENTION_OPS)}")
    fused = copy.deepcopy(model).eval()
    count = 0
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.TransformerEncoderLayer):
                setattr(parent, name, FusedEncoderLayer(child, op))
            elif _timm_attention(child):
                setattr(parent, name, FusedSelfAttention(child.qkv.weight, child.qkv.bias, child.proj,
                                                         child.num_heads, child.scale, op))
            else:
                continue
            count += 1
    if not count:
        raise GraftError(f"fused attention export: {type(model).__name__} has no attention this exporter can fuse")
    return fused, count


def fused_op_counts(path: str | Path) -> dict[str, int]:
    """{op type: count} of the ONNX file's nodes (contrib and standard), for the fusion record and tests."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------ export

FUSED_OPS = ("Attention", "MultiHeadAttention", "QAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu",
             "Gelu", "LayerNormalization", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "Softmax")


def runtime_op_counts(path: str | Path) -> dict[str, int]:
    """{op type: count} of the graph ONNX Runtime's CPU session really runs (after its own load-time fusions such as
    SkipLayerNormalization and BiasGelu), restricted to FUSED_OPS."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix=".ort-opt-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        counts = fused_op_counts(opts.optimized_model_filepath)
    return {k: counts[k] for k in FUSED_OPS if counts.get(k)}


def export_fused(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET, external_data: bool | None = None,
                 op: str = DEFAULT_ATTENTION_OP) -> dict[str, Any]:
    """FP32 ONNX of `model.embed` with every self-attention one `op` node.

    ONNX Runtime's transformer optimizer (onnxruntime.transformers) is not run: its shape inference fails on
    this graph, and ORT's own load-time optimisations already fuse SkipLayerNormalization and BiasGelu.

    Returns the record for the artefact's metadata (op, fused counts); GraftError when the graph holds
    fewer fused attention nodes than the model has attention layers.
    """
    path = Path(path)
    fused, count = fused_copy(model, op)
    with contrib_schemas():
        export_onnx(fused, path, opset=opset, external_data=external_data, translation_table=translation_table())
    counts = fused_op_counts(path)
    if counts.get(op, 0) != count:
        raise GraftError(f"fused ONNX export: {counts.get(op, 0)} {op} nodes in the graph, the model has {count} "
                         "attention layers")
    record = {"attention_op": op, "attention_layers": count, "softmax_left": counts.get("Softmax", 0),
              "fused_ops": {k: counts[k] for k in FUSED_OPS if counts.get(k)}}
    return record
