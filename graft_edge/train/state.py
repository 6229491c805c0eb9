"""Resume state: RNG states as tensors (weights_only-loadable), config comparison, seeding."""
from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch

from graft_edge.errors import GraftError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's python/numpy/torch/CUDA RNG states as tensors and numbers only."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": float("nan") if py_gauss is None else float(py_gauss)},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only when the GPU count matches)."""
    py = state["python"]
    gauss = None if np.isnan(py["gauss"]) else float(py["gauss"])
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["gauss"])))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a.b.c': leaf}; lists/tuples are leaves (compared as lists)."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(data) if isinstance(data, tuple) else data}


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between two config dicts: (key, saved, current), sorted by key."""
    a, b = flatten(saved), flatten(current)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def require_same_config(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """GraftError naming the first differing key when a resumed run's config changed."""
    diff = config_diff(saved, current)
    if diff:
        key, old, new = diff[0]
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise GraftError(f"--resume: config key {key} is {new!r} but the run in {where} used {old!r}{more}; "
                         "resume with the same config, or start a new run")
