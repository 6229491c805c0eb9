"""Frontier reports: CSV, JSON, Markdown (the paper's Tables 3-4 plus deployment columns) and a two-panel plot.

A frontier row is one (variant, format) artefact::

    {"variant": "p70", "target": "70%", "params": int, "params_nonzero": int, "format": "onnx",
     "artefact": str, "size_bytes": int, "status": "ok" | "error: ...",
     "mAP", "R1", "R5", "R10": fractions or None (the mean over seeds when the frontier ran several),
     "mAP_std", "R1_std", ...: sample std over the seeds (None below two), "n_seeds": how many,
     "batch": the timing batch,
     "latency_ms", "min_ms", "p90_ms", "p99_ms": ms PER SAMPLE (the call's p50 / fastest / p90 / p99 divided by
                                                 the batch) or None,
     "speedup": dense-torch per-sample p50 / this per-sample p50, or None,
     "speedup_min": the same ratio of the fastest calls (robust to other load on the machine),
     "val_mAP_vs_dense", "mAP_vs_dense": verdict against dense PyTorch (graft_edge.verdicts), with "*_diff" and
                                          its 95% interval "*_diff_low", "*_diff_high" (fractions),
     "pareto": bool (on the noise-aware latency front, chosen by the workflow: workflows.frontier_verdicts)}
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

from graft_edge.fileio import atomic_write, write_json, write_text
from graft_edge.formats import markers
from graft_edge.units import format_count

CSV_COLUMNS = ("variant", "target", "params", "params_nonzero", "format", "size_bytes", "status", "mAP", "mAP_std",
               "R1", "R1_std", "n_seeds", "R5", "R10", "val_mAP", "val_mAP_std", "val_R1", "val_R1_std",
               "val_mAP_vs_dense", "val_mAP_diff", "val_mAP_diff_low", "val_mAP_diff_high", "val_mAP_seeds_needed",
               "mAP_vs_dense", "mAP_diff", "mAP_diff_low", "mAP_diff_high", "mAP_seeds_needed", "mAP_rerank", "R1_rerank",
               "worst_mAP", "worst_mAP_std", "worst_subset", "batch", "latency_ms", "min_ms",
               "p90_ms", "p99_ms", "speedup", "speedup_min", "pareto", "precision", "achieved_gflops", "peak_precision",
               "peak_gflops", "share_of_peak", "share_of_square_peak",
               "artefact")


ROW_UNITS = {"latency_ms": "ms per sample (p50 of the call / batch)", "min_ms": "ms per sample (fastest call / batch)",
             "p90_ms": "ms per sample (p90 of the call / batch)", "p99_ms": "ms per sample (p99 of the call / batch)",
             "mAP": "fraction", "R1": "fraction", "mAP_rerank": "fraction (k-reciprocal re-ranked, --rerank)",
             "R1_rerank": "fraction (k-reciprocal re-ranked, --rerank)", "R5": "fraction", "R10": "fraction", "size_bytes": "bytes",
             "params": "parameters of the embedding model",
             "achieved_gflops": "GFLOP/s (model FLOPs per sample / latency_ms)",
             "peak_gflops": "GFLOP/s of the shape-true GEMM peak of peak_precision on this machine (the artefact's own "
                            "GEMM shapes at the timing batch, fastest runtime)",
             "share_of_peak": "fraction (achieved_gflops / peak_gflops)",
             "share_of_square_peak": "fraction (achieved_gflops / the cached 2048^3 GEMM peak of peak_precision)", "mAP_std": "fraction (sample std over seeds)",
             "R1_std": "fraction (sample std over seeds)", "n_seeds": "finetuning seeds averaged",
             "val_mAP": "fraction (validation split: held-out training ids)", "val_R1": "fraction (validation split)",
             "mAP_vs_dense": "better | worse | equivalent | inconclusive: test mAP vs dense PyTorch (graft_edge.verdicts; "
                             "reported only)",
             "val_mAP_vs_dense": "the same on validation mAP (what chooses the front and the headline)",
             "mAP_diff": "fraction (mean of the per-seed differences from dense)",
             "mAP_diff_low": "fraction (95% interval of mAP_diff, lower end)",
             "mAP_diff_high": "fraction (95% interval of mAP_diff, upper end)",
             "mAP_seeds_needed": "seeds that would decide an inconclusive verdict at the observed spread",
             "worst_mAP": "fraction (--robustness: the lowest mAP over every non-empty subset of the sensors)",
             "worst_subset": "the subset with worst_mAP (seed 0's), e.g. rgb+nir; or why it was not measured"}


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """frontier.csv: one line per artefact, CSV_COLUMNS in order (fractions for mAP/R*, ms for latency)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in CSV_COLUMNS])
    return write_text(path, buf.getvalue())


def _pct(v: Any, std: Any = None) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if std is None else f"{100 * v:.1f} ± {100 * std:.1f}"


def _worst(row: dict[str, Any]) -> str:
    """'33.1 ± 2.0 (rgb+nir)': a row's worst-subset mAP and which subset ('-' where not measured)."""
    if row.get("worst_mAP") is None:
        return "-"
    return f"{_pct(row['worst_mAP'], row.get('worst_mAP_std'))} ({row.get('worst_subset')})"


def _num(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _verdict_cell(r: dict[str, Any], key: str) -> str:
    """'worse -3.6 [-5.1, -2.1]' (points) from a row's `{key}_vs_dense` fields, '-' when not judged."""
    verdict = r.get(f"{key}_vs_dense")
    if not verdict:
        return "-"
    diff, low, high = (r.get(f"{key}_diff{s}") for s in ("", "_low", "_high"))
    cell = f"{verdict} {100 * diff:+.1f}" if diff is not None else verdict
    return cell + (f" [{100 * low:+.1f}, {100 * high:+.1f}]" if low is not None and high is not None else "")


def markdown_table(rows: Sequence[dict[str, Any]], title: str | None = None, note: str | None = None) -> str:
    """The frontier as Markdown: Parameters, mAP, R1, R5, R10 (%, paper Tables 3-4) + format, size, latency."""
    lines = []
    if title:
        lines += [f"### {title}", ""]
    batch = next((r.get("batch") for r in rows if r.get("batch")), None)
    lat_head = f"ms/sample (batch {batch})" if batch else "ms/sample"
    share = any(r.get("share_of_peak") for r in rows)  # the column is left out where no peak is known
    robust = any(r.get("worst_mAP") is not None for r in rows)  # --robustness: the worst sensor subset's mAP
    lines.append(f"| Variant | Parameters | Format | Size (MB) | mAP | R1 | R5 | R10 | val mAP | "
                 f"{'worst subset mAP | ' if robust else ''}val vs dense | test vs dense | n | {lat_head} | "
                 f"Speed-up | GFLOP/s | {'% of peak | ' if share else ''}Pareto |")
    lines.append(f"|---|---:|---|---:|---:|---:|---:|---:|---:|{'---:|' if robust else ''}---|---|---:|---:|---:|---:|"
                 f"{'---:|' if share else ''}:---:|")
    for r in rows:
        status = r.get("status", "ok")
        fmt = r["format"] if status == "ok" else f"{r['format']} ({status})"
        lines.append(
            f"| {r['variant']} | {format_count(r['params']) if r.get('params') is not None else '-'} | {fmt} | "
            f"{_num(r['size_bytes'] / 1e6 if r.get('size_bytes') is not None else None, '.2f')} | "
            f"{_pct(r.get('mAP'), r.get('mAP_std'))} | {_pct(r.get('R1'), r.get('R1_std'))} | "
            f"{_pct(r.get('R5'), r.get('R5_std'))} | {_pct(r.get('R10'), r.get('R10_std'))} | "
            f"{_pct(r.get('val_mAP'), r.get('val_mAP_std'))} | {_worst(r) + ' | ' if robust else ''}"
            f"{_verdict_cell(r, 'val_mAP')} | {_verdict_cell(r, 'mAP')} | {r.get('n_seeds') or '-'} | "
            f"{_num(r.get('latency_ms'), '.3f')} | {_num(r.get('speedup'), '.2f') + 'x' if r.get('speedup') else '-'} | "
            f"{_num(r.get('achieved_gflops'), '.1f')} | "
            + (f"{_num(100 * r['share_of_peak'] if r.get('share_of_peak') else None, '.0f')}"
               f"{' ' + r['peak_precision'] if r.get('share_of_peak') else ''} | " if share else "")
            + f"{'*' if r.get('pareto') else ''} |"
        )
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, rows: Sequence[dict[str, Any]], title: str | None = None,
                   note: str | None = None) -> Path:
    """frontier.md."""
    return write_text(path, markdown_table(rows, title, note))


def write_json_report(path: str | Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """frontier.json: {"schema": "graft-edge/frontier", "schema_version": 2, "units", **meta, "rows": rows}.

    Version 2: every `*_ms` field of a row is per sample (version 1 had p90_ms / p99_ms per call).
    """
    return write_json(path, {"schema": "graft-edge/frontier", "schema_version": 2, "units": ROW_UNITS, **meta,
                             "rows": list(rows)})


MIN_MAP_SPAN = 10.0  # points of mAP the y axis spans at least, so seed noise is not magnified into a trend


def _dense_reference(ax: Any, rows: Sequence[dict[str, Any]], band: dict[str, float], colour: Any) -> None:
    """Dense mAP as a horizontal line (first format with a dense row) with its ± noise band when known."""
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    if dense is None:
        return
    y, half = 100 * dense["mAP"], 100 * band.get(dense["format"], 0.0)
    ax.axhline(y, color=colour, lw=1, ls=":", zorder=1, label=f"dense ({dense['format']})")
    if half > 0:
        ax.axhspan(y - half, y + half, color=colour, alpha=0.12, zorder=0, label="dense ± seed noise")


def _min_span(ax: Any, span: float = MIN_MAP_SPAN) -> None:
    """Widen the y range to at least `span` around its centre."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)


def write_plot(path: str | Path, rows: Sequence[dict[str, Any]], title: str = "GraFT accuracy-efficiency frontier",
               band: dict[str, float] | None = None, front_label: str = "Pareto front") -> Path:
    """frontier.png: left mAP vs parameters, right mAP vs per-sample latency; the rows marked `pareto_params` /
    `pareto` (the fronts, chosen by the caller) ringed and joined, labelled `front_label`.

    Points with `mAP_std` get ± std error bars; dense is a dotted reference line with a ± `band[format]` noise
    band (fractions); the y axis spans at least MIN_MAP_SPAN points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get("mAP") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    formats = list(dict.fromkeys(r["format"] for r in ok))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = ((axes[0], "params", "pareto_params", "embedding parameters (M)", 1e-6),
              (axes[1], "latency_ms", "pareto", "latency per sample (ms)", 1.0))
    for ax, key, pkey, label, scale in panels:
        for k, fmt in enumerate(formats):
            pts = [r for r in ok if r["format"] == fmt and r.get(key) is not None]
            if not pts:
                continue
            ax.scatter([r[key] * scale for r in pts], [100 * r["mAP"] for r in pts], label=fmt,
                       marker=markers().get(fmt, "o"), color=colours[k % len(colours)], s=40, zorder=3)
            err = [r for r in pts if r.get("mAP_std") is not None]
            if err:
                ax.errorbar([r[key] * scale for r in err], [100 * r["mAP"] for r in err],
                            yerr=[100 * r["mAP_std"] for r in err], fmt="none", ecolor=colours[k % len(colours)],
                            capsize=3, lw=1, zorder=3)
        labelled: set[tuple[str, float, float]] = set()
        for r in ok:  # one label per variant and (rounded) position: formats of one variant often coincide
            if r.get(key) is None:
                continue
            spot = (r["variant"], round(r[key] * scale, 3 if key == "params" else 2), round(100 * r["mAP"], 1))
            if key == "params":
                spot = (r["variant"], spot[1], 0.0)
            if spot in labelled:
                continue
            labelled.add(spot)
            ax.annotate(r["variant"], (r[key] * scale, 100 * r["mAP"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        front = sorted((r for r in ok if r.get(pkey) and r.get(key) is not None), key=lambda r: r[key])
        if front:
            ax.plot([r[key] * scale for r in front], [100 * r["mAP"] for r in front], "--", color="0.4", lw=1,
                    zorder=2, label=front_label)
            ax.scatter([r[key] * scale for r in front], [100 * r["mAP"] for r in front], s=140, facecolors="none",
                       edgecolors="k", lw=1.2, zorder=4)
        _dense_reference(ax, ok, band or {}, colours[0])
        _min_span(ax)
        ax.set_xlabel(label)
        ax.set_ylabel("test mAP (%)" + (" - mean ± std over seeds" if any(r.get("mAP_std") for r in ok) else ""))
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axes[1].xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[1].xaxis.set_major_formatter(ScalarFormatter())
    axes[1].xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)
