"""Parity of an exported artefact with the PyTorch model: max abs diff and cosine of embeddings.

Every artefact is run at two batch sizes (1 and 4 by default: the ONNX batch is dynamic, so a
second size is the check that it really is) on random normalised-image-like inputs and, when a
dataset is given, on real images; then, for a model that can drop modalities, once more per proper
non-empty subset of its modalities (missing sensors), on real images when there are some. FP32 must
match within an absolute tolerance; reduced precisions (FP16, INT8) are judged by the cosine of their
embeddings with the FP32 ones.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from graft_edge.errors import GraftError
from graft_edge.inputs import random_images

Batch = dict[str, np.ndarray]
EmbedFn = Callable[[Batch], np.ndarray]
PARITY_BATCHES = (1, 4)
PARITY_SEED = 1234
SUBSET_REAL_SAMPLES = 8  # real images per subset check (2^M - 2 subsets: keep the export quick on big models)


@dataclass
class ParityCheck:
    """One comparison: which inputs, which batch size, and the numbers."""

    inputs: str  # random | real
    batch: int
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    modalities: str = "all"  # the subset present ("rgb+nir"), or "all"


@dataclass
class ParityReport:
    """All comparisons of one artefact against its reference, plus the worst case over them."""

    reference: str  # what it was compared with (pytorch-fp32)
    checks: list[ParityCheck] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=float("nan"))

    @property
    def min_cosine(self) -> float:
        return min((c.min_cosine for c in self.checks), default=float("nan"))

    @property
    def mean_cosine(self) -> float:
        """Mean over checks, weighting each check by its batch size."""
        n = sum(c.batch for c in self.checks)
        return float(sum(c.mean_cosine * c.batch for c in self.checks) / n) if n else float("nan")

    def worst(self, inputs: str) -> dict[str, float] | None:
        """Worst numbers over the checks on one kind of input (None when there were none)."""
        sel = [c for c in self.checks if c.inputs == inputs]
        if not sel:
            return None
        return {"max_abs_diff": max(c.max_abs_diff for c in sel), "min_cosine": min(c.min_cosine for c in sel),
                "mean_cosine": float(np.mean([c.mean_cosine for c in sel]))}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the metadata."""
        return {"reference": self.reference, "max_abs_diff": self.max_abs_diff, "min_cosine": self.min_cosine,
                "mean_cosine": self.mean_cosine, "checks": [asdict(c) for c in self.checks]}


def compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(max abs diff, min cosine, mean cosine) of two (B, D) embedding batches."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise GraftError(f"exported model returned shape {got.shape}, PyTorch {ref.shape}")
    if not np.all(np.isfinite(got)):
        return float("inf"), float("-inf"), float("-inf")
    diff = float(np.max(np.abs(ref - got)))
    num = np.sum(ref * got, axis=1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cos = num / np.maximum(den, 1e-12)
    return diff, float(np.min(cos)), float(np.mean(cos))


def slice_batch(batch: Mapping[str, np.ndarray], n: int) -> Batch:
    """The first n samples of every modality (contiguous copies: runtimes want C order)."""
    return {m: np.ascontiguousarray(x[:n]) for m, x in batch.items()}


def torch_reference(model: torch.nn.Module) -> EmbedFn:
    """The PyTorch FP32 embedding function the artefacts are compared with."""

    @torch.no_grad()
    def run(batch: Batch) -> np.ndarray:
        return model.embed({m: torch.from_numpy(np.ascontiguousarray(x)) for m, x in batch.items()}).float().numpy()

    return run


def subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every proper non-empty subset of the modalities, in the model's order (smallest first)."""
    mods = tuple(modalities)
    return [c for k in range(1, len(mods)) for c in combinations(mods, k)]


def parity_inputs(modalities: Sequence[str], img_size: Sequence[int], real: Batch | None,
                  batches: Sequence[int] = PARITY_BATCHES, missing: bool = False) -> list[tuple[str, int, Batch]]:
    """(kind, batch size, inputs) for every check: random at each of `batches`; real (when given) at
    batch 1 and at all of its samples (two sizes, and enough samples for cosine statistics); with
    `missing`, each proper subset of the modalities on up to SUBSET_REAL_SAMPLES real images (random inputs at
    the largest batch without a dataset)."""
    big = max(batches)
    rand = random_images(modalities, img_size, big, seed=PARITY_SEED)
    out = [("random", b, slice_batch(rand, b)) for b in batches]
    if real:
        n = len(next(iter(real.values())))
        out += [("real", b, slice_batch(real, b)) for b in sorted({1, n})]
    for subset in subsets(modalities) if missing else []:  # real images when there are some (cheaper, and judged)
        src, kind = (slice_batch(real, SUBSET_REAL_SAMPLES), "real") if real else (rand, "random")
        out.append((kind, len(next(iter(src.values()))), {m: src[m] for m in subset}))
    return out


def _key(kind: str, b: int, batch: Batch) -> tuple[str, int, str]:
    return kind, b, "+".join(batch)


def measure(reference: Mapping[tuple[str, int, str], np.ndarray], candidate: EmbedFn,
            inputs: Sequence[tuple[str, int, Batch]], reference_name: str = "pytorch-fp32") -> ParityReport:
    """Run the candidate on every input and compare with the precomputed reference embeddings."""
    report = ParityReport(reference=reference_name)
    full = max((len(batch) for _, _, batch in inputs), default=0)
    for kind, b, batch in inputs:
        diff, cmin, cmean = compare(reference[_key(kind, b, batch)], candidate(batch))
        subset = "all" if len(batch) == full else "+".join(batch)
        report.checks.append(ParityCheck(kind, b, diff, cmin, cmean, subset))
    return report


def reference_embeddings(ref: EmbedFn, inputs: Sequence[tuple[str, int, Batch]]) -> dict[tuple[str, int, str], np.ndarray]:
    """The reference's embeddings of every parity input, computed once and shared by all artefacts."""
    return {_key(kind, b, batch): ref(batch) for kind, b, batch in inputs}
