"""Triton model configs as Triton's own ModelConfig protobuf (shipped by tritonclient), and the model-name rule.

Both model repositories graft-edge writes (`serve`'s Python-backend one, `export --triton`'s standalone one)
name a model after its artefact file and build config.pbtxt with this protobuf, then parse the text back
before it counts as written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from graft_edge.errors import GraftError

INSTALL_HINT = "install graft-edge's serve extra: pip install 'graft-edge[serve]' (tritonclient ships Triton's protobuf)"


def model_name(path: str | Path) -> str:
    """The Triton model name of an artefact: its file name without the last suffix, made Triton-safe."""
    stem = Path(path).name.rsplit(".", 1)[0] if "." in Path(path).name else Path(path).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "model"


def model_config_pb2(needed_by: str = "--triton") -> Any:
    """Triton's model_config protobuf module (from tritonclient); GraftError saying how to install it."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise GraftError(f"{needed_by} needs Triton's model-config protobuf: {INSTALL_HINT}") from None
    return model_config_pb2


def parse_config(text: str, where: str) -> Any:
    """Parse config.pbtxt text with Triton's ModelConfig protobuf; GraftError naming the problem."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise GraftError(f"{where} is not a valid Triton model config ({exc})") from None


def config_text(cfg: Any, where: str) -> str:
    """A ModelConfig message as config.pbtxt text, checked by parsing it back (GraftError when it does not)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(cfg)
    if parse_config(text, where) != cfg:
        raise GraftError(f"{where} does not round-trip through Triton's protobuf")
    return text
