"""The frontier's reports: one row per (variant, format) with speed-ups, then CSV / JSON / Markdown / PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from graft_edge.profile import report
from graft_edge.profile.peaks import roofline
from graft_edge.verdicts import DEFAULT_MARGIN
from graft_edge.workflows.frontier_seeds import aggregate_rows, noise_band
from graft_edge.workflows.frontier_state import FrontierState, LatencyRecord
from graft_edge.workflows.frontier_verdicts import choice_key, front_note, mark_front, mark_verdicts, summary


def busy_note(lat: LatencyRecord | None) -> str:
    """A warning when other processes competed for the CPU while timing (load average above the cores)."""
    cores = ((lat.machine if lat else {}) or {}).get("cores_usable") or 0
    loads = [x for x in (lat.loadavg if lat else []) if x is not None]
    if cores and loads and max(loads) > cores:
        return (f"Warning: the machine was busy while timing (load average up to {max(loads):.1f} on {cores} cores); "
                "latencies are inflated, multi-threaded eager PyTorch (OpenMP) most of all, which flatters p50 "
                "speed-ups; compare with the best-of-N ratio (speedup_min).")
    return ""


def _per_sample(stats: dict[str, Any] | None, key: str) -> float | None:
    """A per-call statistic of a LatencyStats record divided by its batch (ms per sample)."""
    return stats[key] / stats["batch"] if stats else None


def _roofline(lat: LatencyRecord, key: str, row: dict[str, Any]) -> dict[str, Any]:
    """achieved_gflops, peak_precision, peak_gflops, share_of_peak of one timed artefact (None where unknown)."""
    rec = roofline(lat.flops.get(key), row["latency_ms"], lat.precision.get(key) or row.get("precision"),
                   (lat.shape_peaks or {}).get(key), lat.peaks)
    return {"precision": lat.precision.get(key) or row.get("precision"), "achieved_gflops": rec["achieved_gflops"],
            "peak_precision": rec["peak_precision"], "peak_gflops": rec["peak_gflops"],
            "share_of_peak": rec["share_of_peak"], "share_of_square_peak": rec["share_of_square_peak"]}


def seed_rows(state: FrontierState, formats: Sequence[str] | None = None,
              seeds: int | None = None) -> list[dict[str, Any]]:
    """One row per (variant, seed, format) in variant order (seeds below `seeds` only, when given)."""
    lat = state.latency.results if state.latency else {}
    batch = state.latency.batch if state.latency else None
    rows = []
    for vname in state.order:
        v = state.variants.get(vname)
        if v is None or (seeds is not None and v.seed >= seeds):
            continue
        for fmt in (formats or list(v.formats)):
            rec = v.formats.get(fmt)
            if rec is None:
                continue
            acc = rec.accuracy or {}
            stats = lat.get(f"{vname}/{fmt}")
            rows.append({
                "variant": v.label, "target": v.target, "params": v.params, "params_nonzero": v.params_nonzero,
                "format": fmt, "precision": acc.get("precision"), "artefact": rec.path or None, "size_bytes": rec.size_bytes, "status": rec.status,
                "mAP": acc.get("mAP"), "R1": acc.get("R1"), "R5": acc.get("R5"), "R10": acc.get("R10"),
                **{f"val_{k}": acc.get(f"val_{k}") for k in ("mAP", "R1", "R5", "R10")},
                "mAP_rerank": (acc.get("rerank") or {}).get("mAP"), "R1_rerank": (acc.get("rerank") or {}).get("R1"),
                "worst_mAP": acc.get("worst_mAP"), "worst_subset": acc.get("worst_subset", acc.get("worst_error")),
                "batch": batch if stats else None, "latency_ms": _per_sample(stats, "p50_ms"),
                "min_ms": _per_sample(stats, "min_ms"), "p90_ms": _per_sample(stats, "p90_ms"),
                "p99_ms": _per_sample(stats, "p99_ms"), "speedup": None, "speedup_min": None,
                "key": f"{vname}/{fmt}", "seed": v.seed,
            })
            if state.latency is not None:
                rows[-1].update(_roofline(state.latency, f"{vname}/{fmt}", rows[-1]))
    return rows


def frontier_rows(state: FrontierState, formats: Sequence[str] | None = None, seeds: int | None = None,
                  margin: float = DEFAULT_MARGIN) -> tuple[list[dict[str, Any]], str]:
    """One row per (variant, format) in variant order, mAP/R1/... (test) and val_mAP/val_R1/... (validation) as
    mean ± std over the seeds (`*_std`, `n_seeds`), both judged against dense PyTorch (frontier_verdicts: the
    validation verdicts choose the noise-aware front, the test ones are reported), with speed-up vs the dense
    PyTorch model; and a note."""
    lat = state.latency.results if state.latency else {}
    batch = state.latency.batch if state.latency else None
    per_seed = seed_rows(state, formats, seeds)
    rows = aggregate_rows(per_seed)
    ref = lat.get("dense/torch")
    note = ""
    if ref:
        for r in rows:
            if r["latency_ms"]:
                r["speedup"] = _per_sample(ref, "p50_ms") / r["latency_ms"]
                r["speedup_min"] = _per_sample(ref, "min_ms") / r["min_ms"] if r["min_ms"] else None
        note = (f"Speed-up: dense PyTorch eager per-sample latency / the artefact's, both p50 at batch {batch}, "
                f"timed in one interleaved pass on the same machine (speedup_min in the CSV/JSON: the same ratio "
                f"of the fastest calls).")
        busy = busy_note(state.latency)
        if busy:
            note += " " + busy
    mark_verdicts(rows, per_seed, margin)
    mark_front(rows, per_seed, margin)
    return rows, note


def write_reports(state: FrontierState, out: Path, formats: Sequence[str] | None = None, seeds: int | None = None,
                  margin: float = DEFAULT_MARGIN) -> tuple[list[dict[str, Any]], dict[str, Path], str]:
    """frontier.csv / .json / .md / .png from the state (mean ± std over seeds below `seeds`; per-seed rows
    in the JSON's `seed_rows`; verdicts at `margin`, a fraction of mAP)."""
    rows, note = frontier_rows(state, formats, seeds, margin)
    n = max((r.get("n_seeds") or 0 for r in rows), default=0)
    if n > 1:
        note = (f"mAP/R1/R5/R10: mean ± sample std over {n} finetuning seeds (dense: one model, no finetuning); "
                "latency and size of seed 0. " + note).strip()
    lat = state.latency
    machine = lat.machine if lat else {}
    sw = machine.get("software", {})
    mline = (f"Measured on {machine.get('cpu', '?')} ({machine.get('cores_usable', '?')} cores), "
             f"device {lat.device}, threads {lat.threads or 'default'}, PyTorch at {getattr(lat, 'dtype', 'fp32')}; "
             f"torch {sw.get('torch')}, onnxruntime {sw.get('onnxruntime')}." if machine else "")
    lat_meta = {k: v for k, v in vars(lat).items() if k not in ("results", "hashes")} if lat else {}
    files = {
        "csv": report.write_csv(out / "frontier.csv", rows),
        "json": report.write_json_report(out / "frontier.json", rows, {
            "source": state.source, "settings": state.settings, "latency": lat_meta, "note": note,
            "margin": margin, "seed_rows": seed_rows(state, formats, seeds)}),
        "md": report.write_markdown(out / "frontier.md", rows, title="GraFT frontier",
                                    note=" ".join(x for x in (note, mline, "mAP/R1/R5/R10 (test split) and val mAP "
                                                              "(validation: held-out training ids) in %, measured on "
                                                              "the exported artefact; vs dense: the difference from "
                                                              "dense PyTorch in points with its 95% interval.",
                                                              front_note(rows), summary(rows, margin)) if x)),
    }
    if any(r.get("mAP") is not None for r in rows):
        bands = {f: noise_band(rows, f) for f in dict.fromkeys(r["format"] for r in rows)}
        on = "val mAP" if choice_key(rows) == "val_mAP" else "test mAP"
        files["png"] = report.write_plot(out / "frontier.png", rows, band={f: b for f, b in bands.items() if b},
                                         front_label=f"front (noise-aware, chosen on {on})")
    return rows, files, note
