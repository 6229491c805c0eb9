"""A GraFT model in memory as an Embedder: what training, pruning and the checkpoint runtime evaluate."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from graft_edge.artefact.embedder import EmbedderInfo
from graft_edge.cpu import require_bf16
from graft_edge.errors import GraftError
from graft_edge.model.graft import GraFT, count_params, embedding_params


def torch_info(model: GraFT, path: str, checkpoint: Any = None) -> EmbedderInfo:
    """Metadata of an in-memory model (and of its checkpoint file, when there is one)."""
    cfg = model.cfg
    extra = {"params_total": count_params(model), "backbone": cfg.backbone, "fusion": cfg.fusion,
             "num_ids": cfg.num_ids, "history": list(checkpoint.history) if checkpoint else [],
             "pruned": bool(checkpoint and checkpoint.arch),
             "preset": checkpoint.config.preset if checkpoint else None}
    if os.path.isfile(path):
        extra["file_size"] = os.path.getsize(path)
    return EmbedderInfo(
        format="torch", path=str(path), modalities=tuple(cfg.modalities), img_size=tuple(cfg.img_size),
        mean=tuple(cfg.mean), std=tuple(cfg.std), embed_dim=model.embed_dim,
        params_embedding=embedding_params(model), params_nonzero=embedding_params(model, nonzero=True),
        extra=extra,
    )


DTYPES = ("fp32", "bf16", "fp16")  # what --dtype accepts for PyTorch checkpoints
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_dtype(dtype: str, device: torch.device) -> str:
    """The normalised --dtype; GraftError when it is unknown or the device cannot run it natively.

    bf16: CUDA GPUs with bf16, CPUs with AVX512-BF16/AMX. fp16: CUDA GPUs only (CPU fp16 matrix units are rare;
    on a CPU use bf16).
    """
    dtype = str(dtype).strip().lower()
    if dtype not in DTYPES:
        raise GraftError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type != "cuda":
        raise GraftError(f"--dtype fp16 runs on CUDA GPUs only (device here: {device.type}); on a CPU use bf16 or fp32")
    if dtype == "bf16":
        if device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise GraftError(f"--dtype bf16: GPU {torch.cuda.get_device_name(device)} has no native bf16")
        else:
            require_bf16("--dtype bf16")
    return dtype


class ModelEmbedder:
    """Runs `GraFT.embed` under inference mode on the model's device; the caller keeps train/eval mode control.

    `dtype` bf16 / fp16 runs under torch.autocast (half-precision matrix products, LayerNorm/softmax kept FP32 by
    autocast's own op lists): bf16 on CPUs with AVX512-BF16/AMX or CUDA GPUs, fp16 on CUDA GPUs; the embedding
    is returned as float32. `bind` stages inputs on the device once, so timing measures the model, not copies.
    """

    def __init__(self, model: GraFT, path: str = "<memory>", checkpoint: Any = None, dtype: str = "fp32") -> None:
        self.model, self.checkpoint = model, checkpoint
        self.device = next(model.parameters()).device
        self.dtype = check_dtype(dtype, self.device)
        info = torch_info(model, path, checkpoint)
        info.extra.update(precision=self.dtype, autocast=self.dtype != "fp32")
        self.info = info

    def _autocast(self):
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST[self.dtype])

    @torch.inference_mode()
    def embed(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """{modality: (B, 3, H, W)} -> (B, D) float32."""
        inputs = {m: torch.as_tensor(x).to(self.device, non_blocking=True) for m, x in batch.items()}
        with self._autocast():
            out = self.model.embed(inputs)
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def embed_subsets(self, batch: dict[str, np.ndarray],
                      subsets: Sequence[Sequence[str]]) -> dict[tuple[str, ...], np.ndarray]:
        """{subset: (B, D) float32} for a batch of every modality: `embed` of each subset's modalities.

        A fusion-token GraFT runs its backbone once and averages each subset's fusion tokens (`GraFT.combine`);
        other fusions, which mix the modalities, run once per subset.
        """
        if not self.model.supports_presence_mask:
            return {tuple(s): self.embed({m: batch[m] for m in s}) for s in subsets}
        mods = self.model.modalities
        inputs = {m: torch.as_tensor(batch[m]).to(self.device, non_blocking=True) for m in mods}
        out = {}
        with self._autocast():
            tokens, _ = self.model.modality_tokens(inputs)  # (B, M, D)
            for s in subsets:
                mask = torch.tensor([[m in s for m in mods]], dtype=tokens.dtype, device=tokens.device)
                out[tuple(s)] = self.model.combine(tokens, mask.expand(tokens.shape[0], -1)).float().cpu().numpy()
        return out

    def bind(self, batch: dict[str, np.ndarray]) -> Callable[[], torch.Tensor]:
        """Copy `batch` to the device once; the returned call runs the model on it and leaves the output there."""
        inputs = {m: torch.as_tensor(x).to(self.device) for m, x in batch.items()}

        @torch.inference_mode()
        def run() -> torch.Tensor:
            with self._autocast():
                return self.model.embed(inputs)

        return run

    def synchronize(self) -> None:
        """Wait for queued GPU work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
