"""FLOPs of a GraFT model's inference pass, counted once per model (2 per multiply-add).

The FLOPs of the GEMMs the model runs (`graft_edge.model.gemm_shapes`: Linear layers, the patch-embedding
convolution and both products of every attention); element-wise work is not counted, so the count is a lower
bound on work. The exporter stores it in every artefact's metadata (`flops_per_sample`), so a runtime that
cannot count (ONNX Runtime, OpenVINO) still knows it.
"""
from __future__ import annotations

from typing import Mapping

import torch

from graft_edge.inputs import random_images
from graft_edge.model.gemm_shapes import record_gemms, total_flops


def count_flops(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """FLOPs (2 per multiply-add) of the GEMMs of `model.embed(inputs)` (or `model(inputs)`) in inference mode."""
    return total_flops(record_gemms(model, inputs))


def model_flops_per_sample(model: torch.nn.Module, batch: int = 1) -> int:
    """FLOPs per sample of a GraFT model on random inputs of its configured size (all modalities)."""
    cfg = model.cfg
    device = next(model.parameters()).device
    x = {m: torch.from_numpy(a).to(device) for m, a in random_images(cfg.modalities, cfg.img_size, batch).items()}
    return count_flops(model, x) // batch
