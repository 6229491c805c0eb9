"""FP32 ONNX export of `GraFT.embed` with the torch.export-based exporter (torch.onnx.export, dynamo=True).

The graph has one named input per modality of the model, in the model's order (`rgb`, `nir`, `tir`:
float32 B x 3 x H x W, already normalised), then - for GraFT's fusion-token models - `present`
(float32 B x M, 1 where the sample has that modality, 0 where its sensor is missing), and one output
`embedding` (B x D, L2-normalised). One graph serves every subset of sensors: the fusion tokens are
averaged over the present modalities (GraFT.embed_masked), which is what PyTorch computes for that
subset; the alternative, one artefact per subset, multiplies files, engines and Triton models by 2^M - 1.
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

from graft_edge.artefact.onnx_file import EXTERNAL_DATA_THRESHOLD, data_file
from graft_edge.artefact.record import MAX_BATCH, OUTPUT_NAME, PRESENCE_INPUT
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


class MaskedEmbedWrapper(EmbedWrapper):
    """`model.embed_masked`: one (B, 3, H, W) tensor per modality, then the (B, M) presence mask."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *images, present = inputs
        return self.model.embed_masked(dict(zip(self.modalities, images)), present)


def wrapper_for(model: nn.Module) -> EmbedWrapper:
    """The masked wrapper when the model can drop modalities per sample, the plain one otherwise."""
    masked = bool(getattr(model, "supports_presence_mask", False))
    return (MaskedEmbedWrapper if masked else EmbedWrapper)(model).eval()


def graph_inputs(model: nn.Module) -> list[str]:
    """The exported graph's input names, in order."""
    masked = bool(getattr(model, "supports_presence_mask", False))
    return list(model.modalities) + ([PRESENCE_INPUT] if masked else [])


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


def _example(modalities: Sequence[str], img_size: Sequence[int], masked: bool) -> tuple[torch.Tensor, ...]:
    """The example inputs the exporter traces with: one (EXAMPLE_BATCH, 3, H, W) tensor per modality (+ a mask)."""
    images = tuple(torch.from_numpy(x) for x in random_images(modalities, img_size, EXAMPLE_BATCH).values())
    return images + ((torch.ones(EXAMPLE_BATCH, len(modalities)),) if masked else ())


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET,
                external_data: bool | None = None, translation_table: dict | None = None) -> Path:
    """Export `model.embed` to `path` (FP32, dynamic batch); returns the path.

    external_data: None decides by size (weights over ~1.8 GB go to NAME.onnx.data), True/False forces it.
    Writes exactly where told: the caller stages and commits files (see pipeline.py).
    translation_table: the exporter's custom_translation_table (custom torch ops -> ONNX; see fusion.py).
    """
    check_opset(opset)
    path = Path(path)
    model = model.eval()
    wrapper = wrapper_for(model)
    modalities = wrapper.modalities
    names = graph_inputs(model)
    img_size = tuple(model.cfg.img_size)
    if external_data is None:
        external_data = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # *images is one varargs entry for torch.export: its dynamic shapes are a tuple inside a 1-tuple
    dynamic_shapes = (tuple({0: batch} for _ in names),)
    for stale in (path, data_file(path)):
        if stale.exists():
            stale.unlink()
    try:
        with quiet(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapper, _example(modalities, img_size, len(names) > len(modalities)), str(path), dynamo=True,
                input_names=names, output_names=[OUTPUT_NAME], opset_version=opset,
                dynamic_shapes=dynamic_shapes, external_data=bool(external_data), optimize=True, verbose=False,
                custom_translation_table=translation_table,
            )
    except GraftError:
        raise
    except Exception as exc:  # the exporter raises many types, each with pages of text
        raise GraftError(f"ONNX export failed ({_summary_line(exc)})") from None
    if not path.is_file():
        raise GraftError(f"ONNX export wrote no file at {path}")
    return path


def check_exported(path: str | Path, inputs: Sequence[str], opset: int) -> None:
    """Inputs/outputs/opset of a freshly exported file are what the export promised."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    names = [i.name for i in proto.graph.input]
    if names != list(inputs):
        raise GraftError(f"exported ONNX has inputs {names}, expected {list(inputs)}")
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
