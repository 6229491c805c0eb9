"""Seeds of a frontier: per-seed variant names, and the aggregation of per-seed rows into mean ± std.

`frontier --seeds N` repeats the prune + finetune + evaluation chain of every target N times with other
finetuning seeds. Seed 0 keeps the plain variant name (`t<params>`, so frontiers made before seeds resume);
seed k > 0 is `t<params>-s<k>`. The report has one row per (variant, format) with the mean and the sample
standard deviation over the seeds (n in `n_seeds`); latency and size come from seed 0 (the seeds of a
target share its architecture, so they are timed once).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

AGGREGATED = ("mAP", "R1", "R5", "R10", "val_mAP", "val_R1", "val_R5", "val_R10", "mAP_rerank",
              "R1_rerank", "worst_mAP")  # each gets *_std; the row value is the mean


def seed_variant_name(base: str, seed: int) -> str:
    """`t123` for seed 0, `t123-s2` for seed 2."""
    return base if seed == 0 else f"{base}-s{seed}"


def order_key(name: str) -> tuple[int, int, int]:
    """dense first, then the variants `t<params>[-s<k>]` from the largest to the smallest target, seeds in order."""
    if name == "dense":
        return (0, 0, 0)
    base, _, seed = name.partition("-s")
    return (1, -int(base[1:]), int(seed or 0))


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation (n − 1 in the denominator), n) of the values that are not None.

    The std is None below two values (one measurement says nothing about the spread); the mean is None for none.
    """
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return None, None, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)), n


def aggregate_rows(rows: Sequence[dict[str, Any]], by: Sequence[str] = ("variant", "format"),
                   keys: Sequence[str] = AGGREGATED) -> list[dict[str, Any]]:
    """One row per group (default (variant, format)), in first-seen order: mean ± std of `keys` over its seed rows.

    The representative row (seed 0, else the lowest seed) gives everything else (status, size, latency,
    artefact); `n_seeds` counts the seeds with an mAP, `seeds` lists the seeds present.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r[k]) for k in by), []).append(r)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda r: int(r.get("seed") or 0))
        agg = dict(members[0])
        ok = [r for r in members if r.get("status", "ok") == "ok"]
        for key in keys:
            mean, std, n = mean_std(r.get(key) for r in ok)
            agg[key], agg[f"{key}_std"] = mean, std
            if key == "mAP":
                agg["n_seeds"] = n
        agg["seeds"] = [int(r.get("seed") or 0) for r in members]
        agg.pop("seed", None)
        out.append(agg)
    return out


def noise_band(rows: Sequence[dict[str, Any]], fmt: str, key: str = "mAP") -> float | None:
    """Half-width of the dense reference's noise band for `fmt`: dense's own seed std when it has one, else the
    pooled (root-mean-square) seed std of the variants of that format; None when no row has a std."""
    dense = next((r for r in rows if r["variant"] == "dense" and r["format"] == fmt), None)
    if dense is not None and dense.get(f"{key}_std") is not None:
        return float(dense[f"{key}_std"])
    return pooled_std(rows, fmt, key)


def pooled_std(rows: Sequence[dict[str, Any]], fmt: str, key: str = "mAP") -> float | None:
    """The pooled (root-mean-square) seed std of `key` over the rows of format `fmt` that have one; else None."""
    stds = [float(r[f"{key}_std"]) for r in rows if r["format"] == fmt and r.get(f"{key}_std") is not None]
    return math.sqrt(sum(s * s for s in stds) / len(stds)) if stds else None
