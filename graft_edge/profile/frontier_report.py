"""The frontier's reports: one row per (variant, format) with speed-ups, then CSV / JSON / Markdown / PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def busy_note(lat: dict[str, Any]) -> str:
    """A warning when other processes competed for the CPU while timing (load average above the cores)."""
    cores = (lat.get("machine") or {}).get("cores_usable") or 0
    loads = [x for x in (lat.get("loadavg") or []) if x is not None]
    if cores and loads and max(loads) > cores:
        return (f"Warning: the machine was busy while timing (load average up to {max(loads):.1f} on {cores} cores); "
                "latencies are inflated, multi-threaded eager PyTorch (OpenMP) most of all, which flatters p50 "
                "speed-ups; compare with the best-of-N ratio (speedup_min).")
    return ""


def frontier_rows(state: dict[str, Any], out: Path, formats: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """One row per (variant, format) in variant order, with speed-up vs the dense PyTorch model; and a note."""
    from graft_edge.profile.report import mark_pareto

    lat = (state.get("latency") or {}).get("results", {})
    batch = (state.get("latency") or {}).get("batch")
    rows = []
    for vname in state["order"]:
        v = state["variants"].get(vname)
        if v is None:
            continue
        for fmt in (formats or list(v.get("formats", {}))):
            rec = v.get("formats", {}).get(fmt)
            if rec is None:
                continue
            acc = rec.get("accuracy") or {}
            stats = lat.get(f"{vname}/{fmt}")
            rows.append({
                "variant": v["label"], "target": v.get("target"), "params": v.get("params"),
                "params_nonzero": v.get("params_nonzero"), "format": fmt, "artefact": rec.get("artefact"),
                "size_bytes": rec.get("size_bytes"), "status": rec.get("status", "pending"),
                "mAP": acc.get("mAP"), "R1": acc.get("R1"), "R5": acc.get("R5"), "R10": acc.get("R10"),
                "batch": batch if stats else None, "latency_ms": stats["per_sample_ms"] if stats else None,
                "min_ms": stats["min_ms"] / stats["batch"] if stats else None,
                "p90_ms": stats["p90_ms"] if stats else None, "p99_ms": stats["p99_ms"] if stats else None,
                "speedup": None, "speedup_min": None, "key": f"{vname}/{fmt}",
            })
    ref = lat.get("dense/torch")
    note = ""
    if ref:
        for r in rows:
            if r["latency_ms"]:
                r["speedup"] = ref["per_sample_ms"] / r["latency_ms"]
                r["speedup_min"] = (ref["min_ms"] / ref["batch"]) / r["min_ms"] if r["min_ms"] else None
        note = (f"Speed-up: dense PyTorch eager per-sample latency / the artefact's, both p50 at batch {batch}, "
                f"timed in one interleaved pass on the same machine (speedup_min in the CSV/JSON: the same ratio "
                f"of the fastest calls).")
        busy = busy_note(state.get("latency") or {})
        if busy:
            note += " " + busy
    mark_pareto(rows)
    return rows, note


def write_reports(state: dict[str, Any], out: Path, formats: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Path], str]:
    """frontier.csv / .json / .md / .png from the state."""
    from graft_edge.profile import report

    rows, note = frontier_rows(state, out, formats)
    lat = state.get("latency") or {}
    machine = lat.get("machine") or {}
    sw = machine.get("software", {})
    mline = (f"Measured on {machine.get('cpu', '?')} ({machine.get('cores_usable', '?')} cores), "
             f"device {lat.get('device', '?')}, threads {lat.get('threads') or 'default'}; "
             f"torch {sw.get('torch')}, onnxruntime {sw.get('onnxruntime')}." if machine else "")
    files = {
        "csv": report.write_csv(out / "frontier.csv", rows),
        "json": report.write_json_report(out / "frontier.json", rows, {
            "source": state["source"], "settings": state["settings"], "latency": {k: v for k, v in lat.items()
                                                                                   if k != "results"},
            "note": note}),
        "md": report.write_markdown(out / "frontier.md", rows, title="GraFT frontier",
                                    note=" ".join(x for x in (note, mline, "mAP/R1/R5/R10 in %, measured on the "
                                                              "exported artefact; * = on the latency-mAP Pareto front.")
                                                  if x)),
    }
    if any(r.get("mAP") is not None for r in rows):
        files["png"] = report.write_plot(out / "frontier.png", rows)
    return rows, files, note
