"""FP32 ONNX export of `GraFT.embed` with the torch.export-based exporter (torch.onnx.export, dynamo=True).

The graph has one named input per modality of the model, in the model's order (`rgb`, `nir`, `tir`:
float32 B x 3 x H x W, already normalised), and one output `embedding` (B x D, L2-normalised).
The batch dimension is dynamic: the exporter freezes a batch-1 example at 1, so the example uses
batch >= 2 and the caller verifies another batch size in ONNX Runtime (see parity.py).

Weights go into the .onnx file itself unless they exceed `EXTERNAL_DATA_THRESHOLD` (protobuf's
2 GB limit) or the caller asks for external data: then they live beside it in `NAME.onnx.data`
(the exporter's naming), which must stay in the same folder as the .onnx.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from graft_edge.artefact import EXTERNAL_DATA_THRESHOLD, MAX_BATCH, OUTPUT_NAME, data_file
from graft_edge.errors import GraftError
from graft_edge.inputs import random_images

# Opsets torch 2.14.1 + onnxscript 0.7.2 really produce (measured): below 18 the exporter silently
# keeps 18 (its version converter cannot go down), above 25 it emits ops ONNX Runtime rejects.
MIN_OPSET = 18
MAX_OPSET = 25
DEFAULT_OPSET = 18  # the most widely supported by TensorRT 10 / JetPack and ONNX Runtime
EXAMPLE_BATCH = 2  # >= 2, or the exporter specialises the batch dimension to 1


class EmbedWrapper(nn.Module):
    """`model.embed` as a module taking one positional tensor per modality (the ONNX inputs, in order)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.modalities = tuple(model.modalities)

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        """images: one (B, 3, H, W) tensor per modality, in `self.modalities` order -> (B, D)."""
        return self.model.embed(dict(zip(self.modalities, images)))


def check_opset(opset: int) -> int:
    """The opset if this exporter can produce it; GraftError naming the supported range otherwise."""
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise GraftError(
            f"--opset {opset}: torch {torch.__version__.split('+')[0]}'s ONNX exporter produces opsets "
            f"{MIN_OPSET}-{MAX_OPSET} (default {DEFAULT_OPSET}, the most portable to TensorRT)"
        )
    return opset


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (what the ONNX initialisers will hold)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def _summary_line(exc: BaseException) -> str:
    """The most telling single line of an exporter exception (they are pages long)."""
    text = str(exc)
    match = re.search(r"<class '([^']+)'>: (.+)", text)
    if match:
        return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip()[:240]}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:240]}" if lines else type(exc).__name__


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence exporters' and quantisers' prints, warnings and logging (graft-edge reports its own lines)."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example(modalities: Sequence[str], img_size: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The example inputs the exporter traces with: one (EXAMPLE_BATCH, 3, H, W) tensor per modality."""
    return tuple(torch.from_numpy(x) for x in random_images(modalities, img_size, EXAMPLE_BATCH).values())


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET,
                external_data: bool | None = None) -> Path:
    """Export `model.embed` to `path` (FP32, dynamic batch); returns the path.

    external_data: None decides by size (weights over ~1.8 GB go to NAME.onnx.data), True/False forces it.
    Writes exactly where told: the caller stages and commits files (see pipeline.py).
    """
    check_opset(opset)
    path = Path(path)
    model = model.eval()
    wrapper = EmbedWrapper(model).eval()
    modalities = wrapper.modalities
    img_size = tuple(model.cfg.img_size)
    if external_data is None:
        external_data = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # *images is one varargs entry for torch.export: its dynamic shapes are a tuple inside a 1-tuple
    dynamic_shapes = (tuple({0: batch} for _ in modalities),)
    for stale in (path, data_file(path)):
        if stale.exists():
            stale.unlink()
    try:
        with quiet(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper, _example(modalities, img_size), str(path), dynamo=True,
                input_names=list(modalities), output_names=[OUTPUT_NAME], opset_version=opset,
                dynamic_shapes=dynamic_shapes, external_data=bool(external_data), optimize=True, verbose=False,
            )
    except GraftError:
        raise
    except Exception as exc:  # the exporter raises many types, each with pages of text
        raise GraftError(f"ONNX export failed ({_summary_line(exc)})") from None
    if not path.is_file():
        raise GraftError(f"ONNX export wrote no file at {path}")
    return path


def check_exported(path: str | Path, modalities: Sequence[str], opset: int) -> None:
    """Inputs/outputs/opset of a freshly exported file are what the export promised."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    names = [i.name for i in proto.graph.input]
    if names != list(modalities):
        raise GraftError(f"exported ONNX has inputs {names}, expected {list(modalities)}")
    outs = [o.name for o in proto.graph.output]
    if outs != [OUTPUT_NAME]:
        raise GraftError(f"exported ONNX has outputs {outs}, expected ['{OUTPUT_NAME}']")
    got = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
    if got != opset:
        raise GraftError(f"--opset {opset}: the exporter produced opset {got} instead")
    for inp in proto.graph.input:
        dim0 = inp.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise GraftError(f"exported ONNX input {inp.name!r} has a fixed batch of {dim0.dim_value}, expected a dynamic one")
