"""`synth`: write the built-in synthetic multimodal ReID set in the RGBNT100 on-disk layout."""
from __future__ import annotations

from pathlib import Path

import typer

from graft_edge.cli.common import console, guarded
from graft_edge.config import parse_modalities
from graft_edge.data.synthetic import write_synthetic


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
) -> None:
    """Write a synthetic vehicle ReID set where identity needs all modalities (colour in RGB, pattern in NIR, heat in TIR)."""
    summary = write_synthetic(
        out, ids=ids, cameras=cameras, modalities=parse_modalities(modalities), seed=seed,
        images_per_camera=images_per_camera, size=(height, width), overwrite=overwrite,
    )
    console().print(summary.line(), soft_wrap=True)
