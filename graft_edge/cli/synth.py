"""`synth`: write the built-in synthetic multimodal ReID set in the RGBNT100 on-disk layout."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from graft_edge.cli.common import console, guarded
from graft_edge.config import parse_modalities
from graft_edge.data.difficulty import KNOBS, PRESETS, get_difficulty
from graft_edge.data.synthetic import write_synthetic

KNOB_HELP = "; ".join(f"{k}: {meaning} [{lo:g}, {hi:g}]" for k, (lo, hi, meaning) in KNOBS.items())


@guarded
def synth(
    out: Path = typer.Option(..., "--out", help="Dataset root to create (ROOT/rgbir/{bounding_box_train,query,bounding_box_test}); must be empty or absent."),
    ids: int = typer.Option(64, "--ids", help="Identities in total; half train, half test."),
    cameras: int = typer.Option(8, "--cameras", help="Cameras (about a quarter film at night)."),
    modalities: str = typer.Option("rgb,nir,tir", "--modalities", help="Comma-separated subset of rgb,nir,tir; one side-by-side slot each."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same bytes."),
    images_per_camera: int = typer.Option(3, "--images-per-camera", help="Images of each identity per camera."),
    height: int = typer.Option(64, "--height", help="Height of one modality slot in pixels."),
    width: int = typer.Option(128, "--width", help="Width of one modality slot in pixels (the file is width x number of modalities)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder (only once the new set is complete)."),
    difficulty: str = typer.Option("easy", "--difficulty", help=f"Nuisance preset: {' | '.join(PRESETS)} (easy: the "
                                   "original set; capacity: 6 values per cue, the benchmark that bounds the tiny "
                                   "model (use --ids 80 --cameras 16 --images-per-camera 2); hard: also per-camera "
                                   "illumination/colour/blur/noise, partial occlusion, jitter, a degraded sensor; see "
                                   "graft_edge/data/difficulty.py)."),
    knob: Optional[List[str]] = typer.Option(None, "--knob", help=f"Change one knob of the preset, KEY=VALUE "
                                             f"(repeatable). {KNOB_HELP}."),
) -> None:
    """Write a synthetic vehicle ReID set where identity needs all modalities (colour in RGB, pattern in NIR, heat in TIR)."""
    summary = write_synthetic(
        out, ids=ids, cameras=cameras, modalities=parse_modalities(modalities), seed=seed,
        images_per_camera=images_per_camera, size=(height, width), overwrite=overwrite,
        difficulty=get_difficulty(difficulty, knob or ()),
    )
    console().print(summary.line(), soft_wrap=True)
