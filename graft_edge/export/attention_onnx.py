"""ONNX Script translations of fusion.py's attention custom ops into ONNX Runtime contrib nodes.

Its own module because ONNX Script compiles these functions from their source, resolving the type
annotations in the module's globals; fusion.py imports it only while exporting (with the contrib
schemas registered, see fusion.contrib_schemas).
"""
import onnxscript
from onnxscript import opset18
from onnxscript.onnx_types import FLOAT

MS_DOMAIN = "com.microsoft"
msft = onnxscript.values.Opset(MS_DOMAIN, 1)


@onnxscript.script(msft, default_opset=opset18)
def attention_onnx(x: FLOAT, weight: FLOAT, bias: FLOAT, num_heads: int, scale: float) -> FLOAT:
    """graft_edge::attention_qkv -> com.microsoft::Attention (packed q|k|v projection inside the node)."""
    return msft.Attention(x, weight, bias, num_heads=num_heads, scale=scale)


@onnxscript.script(msft, default_opset=opset18)
def mha_onnx(q: FLOAT, k: FLOAT, v: FLOAT, num_heads: int, scale: float) -> FLOAT:
    """graft_edge::attention_mha -> com.microsoft::MultiHeadAttention (projected q, k, v; B x S x N*H each)."""
    return msft.MultiHeadAttention(q, k, v, num_heads=num_heads, scale=scale)


for _fn in (attention_onnx, mha_onnx):  # traced into the graph as the contrib node itself, not as a function
    _fn.traceable = True
