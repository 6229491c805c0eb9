"""FLOPs of a GraFT model's inference pass, counted once per model (2 per multiply-add).

torch.utils.flop_counter.FlopCounterMode counts matmuls, convolutions and attention; element-wise work is
not counted, so the count is a lower bound on work. The exporter stores it in every artefact's metadata
(`flops_per_sample`), so a runtime that cannot count (ONNX Runtime, OpenVINO) still knows it.
"""
from __future__ import annotations

from typing import Mapping

import torch

from graft_edge.inputs import random_images


def count_flops(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """FLOPs (2 per multiply-add) of `model.embed(inputs)` (or `model(inputs)`) in inference mode."""
    from torch.utils.flop_counter import FlopCounterMode

    fn = getattr(model, "embed", model)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder-layer kernel is invisible to the counter
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            fn(dict(inputs))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(counter.get_total_flops())


def model_flops_per_sample(model: torch.nn.Module, batch: int = 1) -> int:
    """FLOPs per sample of a GraFT model on random inputs of its configured size (all modalities)."""
    cfg = model.cfg
    device = next(model.parameters()).device
    x = {m: torch.from_numpy(a).to(device) for m, a in random_images(cfg.modalities, cfg.img_size, batch).items()}
    return count_flops(model, x) // batch
