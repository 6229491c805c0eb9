"""An exported ONNX file's own metadata (`metadata_props`) and where its external weights live."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from graft_edge import __version__
from graft_edge.artefact.record import decode_props, encode_props
from graft_edge.errors import GraftError
from graft_edge.fileio import atomic_write

# weights above this many bytes go to NAME.onnx.data beside the graph (protobuf's 2 GB limit)
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def data_file(onnx_path: str | Path) -> Path:
    """Where the external weights of an ONNX file live when it has them: NAME.onnx.data beside it."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".data")


def _external_locations(path: Path) -> set[str]:
    """File names an ONNX graph's initialisers point to (empty when the weights are inside the graph)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable graph: fall back to the exporter's naming
        return {data_file(path).name}
    return {entry.value for init in proto.graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL
            for entry in init.external_data if entry.key == "location"}


def external_files(path: str | Path) -> list[Path]:
    """The external-weights files an ONNX graph points to that exist beside it (none for a self-contained one)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [path.parent / loc for loc in sorted(_external_locations(path))
            if (path.parent / loc).is_file() and path.parent / loc != path]


def write_onnx_metadata(path: str | Path, meta: Mapping[str, Any]) -> None:
    """Replace the graft-edge entries of an ONNX file's metadata_props (external weights untouched)."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)  # keeps external-data references as they are
    props = encode_props(meta)
    # keep tools' namespaced entries (onnx.infer, onnx.quant.pre_process); drop graft-edge keys (no dot) of the
    # model this one was derived from, so an INT8 file does not inherit FP32-only entries
    kept = [p for p in proto.metadata_props if p.key not in props and "." in p.key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "graft-edge", __version__
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))


def read_onnx_props(path: str | Path) -> dict[str, Any]:
    """The decoded metadata_props of an ONNX file (graph only; external weights are not read)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise GraftError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    return decode_props({p.key: p.value for p in proto.metadata_props})
