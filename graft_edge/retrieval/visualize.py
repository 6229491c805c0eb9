"""Ranked-result strips: per query, one row per modality of the query and its top-K gallery images.

Gallery images that share the query's identity are framed green, others red (grey when an identity is
unknown), the form of torchreid's `visualize_ranked_results`: the first thing to look at when a model
misbehaves. Gallery entries with the query's identity AND camera are skipped, as the evaluation does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from graft_edge.data.dataset import load_images
from graft_edge.data.layouts import Sample
from graft_edge.fileio import atomic_write

GREEN, RED, GREY, WHITE, BLACK = (0, 170, 0), (210, 0, 0), (128, 128, 128), (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class StripLayout:
    """Pixel geometry of one strip: cell size (one image), frame width, gap after the query, caption height."""

    cell: tuple[int, int] = (64, 128)  # (width, height) each image is resized to
    border: int = 4
    gap: int = 12
    caption: int = 14

    @classmethod
    def for_image(cls, width: int, height: int, cell_height: int = 128) -> StripLayout:
        """A layout whose cells keep an image's aspect (synthetic slots are portrait, RGBNT100's landscape)."""
        return cls(cell=(max(16, round(cell_height * width / max(height, 1))), cell_height))

    def size(self, top_k: int, modalities: int) -> tuple[int, int]:
        """(width, height) of a strip with the query plus top_k results and one row per modality."""
        w, h = self.cell[0] + 2 * self.border, self.cell[1] + 2 * self.border
        return (1 + top_k) * w + self.gap, modalities * h + self.caption


def ranked_entries(dist_row: np.ndarray, query_id: int | None, query_cam: int | None,
                   gallery_ids: Sequence[int | None], gallery_cams: Sequence[int | None], top_k: int) -> list[int]:
    """The top_k gallery indices by distance, skipping entries with the query's identity and camera (None: none)."""
    out: list[int] = []
    for j in np.argsort(dist_row, kind="stable"):
        same = query_id is not None and gallery_ids[j] == query_id and gallery_cams[j] == query_cam
        if not same:
            out.append(int(j))
        if len(out) == top_k:
            break
    return out


def _framed(img: Image.Image, layout: StripLayout, colour: tuple[int, int, int]) -> Image.Image:
    """The image resized to one cell inside a coloured frame."""
    cell = img.convert("RGB").resize(layout.cell, Image.BILINEAR)
    framed = Image.new("RGB", (layout.cell[0] + 2 * layout.border, layout.cell[1] + 2 * layout.border), colour)
    framed.paste(cell, (layout.border, layout.border))
    return framed


def draw_strip(query: Sample, gallery: Sequence[Sample], distances: Sequence[float], matches: Sequence[bool | None],
               modalities: Sequence[str], layout: StripLayout = StripLayout()) -> Image.Image:
    """The strip image: columns query | ranked gallery, rows = modalities, captions = rank and distance."""
    width, height = layout.size(len(gallery), len(modalities))
    strip = Image.new("RGB", (width, height), WHITE)
    pen = ImageDraw.Draw(strip)
    cw, ch = layout.cell[0] + 2 * layout.border, layout.cell[1] + 2 * layout.border
    pen.text((2, 1), "query", fill=BLACK)
    for rank, d in enumerate(distances, start=1):
        pen.text((rank * cw + layout.gap + 2, 1), f"{rank}: {d:.3f}", fill=BLACK)
    q_imgs = load_images(query, modalities)
    g_imgs = [load_images(s, modalities) for s in gallery]
    for row, m in enumerate(modalities):
        y = layout.caption + row * ch
        strip.paste(_framed(q_imgs[m], layout, BLACK), (0, y))
        for col, (imgs, match) in enumerate(zip(g_imgs, matches), start=1):
            colour = GREY if match is None else GREEN if match else RED
            strip.paste(_framed(imgs[m], layout, colour), (col * cw + layout.gap, y))
    return strip


def write_ranked_strips(out_dir: str | Path, dist: np.ndarray, queries: Sequence[Sample], gallery: Sequence[Sample],
                        modalities: Sequence[str], num_queries: int, top_k: int = 10,
                        skip_same_camera: bool = True, layout: StripLayout | None = None) -> list[Path]:
    """Write strips for num_queries queries spread evenly over the list; return the files written.

    A negative pid (a file name without one) counts as an unknown identity: its frames are grey.
    skip_same_camera drops gallery entries with the query's identity and camera (the evaluation protocol).
    Without a layout, cells take the aspect of the first query's first modality.
    """
    out_dir = Path(out_dir)
    if layout is None:
        first = load_images(queries[0], modalities[:1])[modalities[0]]
        layout = StripLayout.for_image(*first.size)
    picks = np.unique(np.linspace(0, len(queries) - 1, num=min(num_queries, len(queries))).round().astype(int))
    g_ids = [s.pid if s.pid >= 0 else None for s in gallery]
    g_cams = [s.camid for s in gallery]
    written = []
    for qi in picks:
        query = queries[qi]
        q_id = query.pid if query.pid >= 0 else None
        skip_id = q_id if skip_same_camera else None
        shown = min(top_k, int(np.isfinite(dist[qi]).sum()))
        top = ranked_entries(dist[qi], skip_id, query.camid, g_ids, g_cams, shown)
        matches = [None if q_id is None or g_ids[j] is None else g_ids[j] == q_id for j in top]
        strip = draw_strip(query, [gallery[j] for j in top], [float(dist[qi, j]) for j in top], matches, modalities,
                           layout)
        path = out_dir / f"{int(qi):05d}_{Path(query.sources[0].path).stem}.png"
        written.append(atomic_write(path, lambda p, img=strip: img.save(p, format="PNG")))
    return written
