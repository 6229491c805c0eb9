"""FP16 ONNX with the overflow-prone ops kept in FP32 and FP32 inputs/outputs.

This is what TensorRT >= 11 needs for FP16 (networks are strongly typed: the precision comes from
the ONNX, builder flags are gone), and what FP16 ONNX Runtime EPs run. ViTs overflow FP16 in
LayerNorm (the variance of the residual stream) and in the final L2 normalisation (a sum of D
squares), and lose accuracy in Softmax; those stay FP32, with Cast nodes at the boundaries:
- op types: LayerNormalization, Softmax, and every reduction / power / root (ReduceMean,
  ReduceSum, ReduceSumSquare, ReduceL2, LpNormalization, Pow, Sqrt), plus ORT's default list;
- the output tail: every node after the last LayerNormalization on the way to the output
  (fusion-token gather, modality mean, L2 normalisation) - cheap ops, numerically sensitive.
Matrix multiplies, convolutions, GELU and residual adds run in FP16.
"""
from __future__ import annotations

from pathlib import Path

from graft_edge.artefact.onnx_file import EXTERNAL_DATA_THRESHOLD
from graft_edge.errors import GraftError, one_line

FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
            "LpNormalization", "Pow", "Sqrt")
_TAIL_STOP = ("LayerNormalization", "MatMul", "Gemm", "Conv", "Softmax")


def tail_nodes(graph) -> list[str]:
    """Names of the nodes between the last LayerNorm/MatMul and the graph outputs (kept FP32)."""
    producer = {o: n for n in graph.node for o in n.output}
    todo = [o.name for o in graph.output]
    seen: set[str] = set()
    names: list[str] = []
    while todo:
        tensor = todo.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen or node.op_type in _TAIL_STOP:
            continue
        seen.add(node.name)
        names.append(node.name)
        todo.extend(node.input)
    return names


def drop_duplicate_nodes(graph) -> int:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes); returns how many.

    A node that redefines an earlier node's output differently is a real conflict: GraftError.
    """
    producers: dict[str, bytes] = {}
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if node.output and all(producers.get(o) == key for o in node.output):
            continue  # the same computation of the same tensors: already in the graph
        clash = next((o for o in node.output if o in producers), None)
        if clash is not None:
            raise GraftError(f"FP16 conversion defined tensor {clash!r} twice, differently")
        producers.update({o: key for o in node.output})
        keep.append(node)
    dropped = len(graph.node) - len(keep)
    if dropped:
        del graph.node[:]
        graph.node.extend(keep)
    return dropped


def unique_node_names(graph) -> int:
    """Rename repeated node names (ONNX requires them unique); returns how many were renamed."""
    taken = {node.name for node in graph.node}  # every original name stays reserved
    seen: set[str] = set()
    renamed = 0
    for node in graph.node:
        if node.name in seen:
            k = 1
            while f"{node.name}_{k}" in taken:
                k += 1
            node.name = f"{node.name}_{k}"
            taken.add(node.name)
            renamed += 1
        seen.add(node.name)
    return renamed


def topological_sort(graph) -> None:
    """Reorder graph.node in place so every node comes after the producers of its inputs (Kahn's algorithm)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    producers = {o: idx for idx, n in enumerate(nodes) for o in n.output}
    deps = []
    for n in nodes:
        needed = {producers[i] for i in n.input if i not in available and i in producers}
        deps.append(needed)
    users: dict[int, list[int]] = {}
    for idx, d in enumerate(deps):
        for p in d:
            users.setdefault(p, []).append(idx)
    remaining = [len(d) for d in deps]
    ready = [idx for idx, r in enumerate(remaining) if r == 0]
    order = []
    while ready:
        idx = ready.pop(0)
        order.append(idx)
        for u in users.get(idx, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise GraftError("FP16 conversion produced a graph with a cycle")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def convert_fp16(src: str | Path, dst: str | Path, keep_fp32_ops: tuple[str, ...] = FP32_OPS) -> Path:
    """Write an FP16 copy of the FP32 ONNX `src` to `dst` (FP32 I/O, sensitive ops FP32); returns dst."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    dst = Path(dst)
    proto = onnx.load(str(src))  # with its weights: they are converted too
    unnamed = [n for n in proto.graph.node if not n.name]
    for i, node in enumerate(unnamed):
        node.name = f"graft_node_{i}"
    try:
        converted = convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops),
            node_block_list=tail_nodes(proto.graph),
        )
    except Exception as exc:
        raise GraftError(f"FP16 conversion failed ({one_line(exc)})") from None
    # onnxruntime < 1.32 inserts one identical Cast per consumer of a weight that LayerNorm needs in FP32
    drop_duplicate_nodes(converted.graph)
    unique_node_names(converted.graph)
    topological_sort(converted.graph)  # the converter appends its input Casts at the end: TensorRT parses in order
    del converted.graph.value_info[:]  # stale FP32 hints of the original graph; re-inferred below
    try:
        converted = onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:
        raise GraftError(f"FP16 conversion produced an inconsistent graph ({one_line(exc)})") from None
    large = converted.ByteSize() > EXTERNAL_DATA_THRESHOLD
    onnx.save(converted, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
              location=dst.name + ".data" if large else None)
    return dst


def fp32_islands(path: str | Path, op_type: str = "LayerNormalization") -> list[tuple[str, int]]:
    """(node name, ONNX elem type of its first input) for every `op_type` node: 1 = float32, 10 = float16."""
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    return [(n.name, types.get(n.input[0], 0)) for n in proto.graph.node if n.op_type == op_type]
