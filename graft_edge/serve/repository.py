"""The model repository `graft-edge serve` hands to Triton: one Python-backend model per artefact.

  DIR/<name>/config.pbtxt   backend "python"; every input optional (a request uses one input form);
                            Triton's dynamic batcher; N instances; the artefact, device and threads as
                            parameters; one warm-up request
  DIR/<name>/1/model.py     the stub's entry point: this graft-edge's serve.backend model
The warm-up request (batch 1, one random normalised image per modality, DIR/<name>/warmup/<modality>) runs through the model's own
`execute` while Triton loads the model, before the model is marked ready; a model whose warm-up fails
does not load and the server does not start. With strict readiness the server is ready only once every
model is, so readiness means every artefact has answered an inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import graft_edge
from graft_edge.artefact.embedder import EmbedderInfo
from graft_edge.artefact.record import OUTPUT_NAME
from graft_edge.fileio import atomic_write, write_text
from graft_edge.serve.backend import PARAM_ARTEFACT, PARAM_DEVICE, PARAM_THREADS
from graft_edge.serve.batching import input_specs
from graft_edge.serve.options import ServeOptions
from graft_edge.serve.triton_config import config_text, model_config_pb2

# The stub's Python ignores PYTHONPATH: model.py puts the folder this graft_edge was imported from first on its path,
# so Triton runs the same graft-edge as the `serve` that wrote the repository.
MODEL_PY = """import sys

sys.path.insert(0, {root!r})
from graft_edge.serve.backend import TritonPythonModel  # noqa: E402,F401  (Triton's Python backend loads this)
"""
WARMUP_NAME = "graft-edge warm-up"


@dataclass(frozen=True)
class ServedModel:
    """One artefact to serve: its file and what its runtime reports about it."""

    path: Path
    info: EmbedderInfo


def build_serve_config(name: str, model: ServedModel, opt: ServeOptions) -> Any:
    """The ModelConfig message of one served artefact."""
    pb = model_config_pb2("serve")
    types = {"FP32": pb.TYPE_FP32, "BYTES": pb.TYPE_STRING}
    cfg = pb.ModelConfig(name=name, backend="python", max_batch_size=opt.max_batch)
    for input_name, dtype, dims in input_specs(model.info):
        cfg.input.add(name=input_name, data_type=types[dtype], dims=list(dims), optional=True)
    cfg.output.add(name=OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=[model.info.embed_dim])
    cfg.dynamic_batching.max_queue_delay_microseconds = opt.queue_delay_us
    cfg.instance_group.add(count=opt.instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    params = {PARAM_ARTEFACT: str(model.path.resolve()), PARAM_DEVICE: opt.device,
              PARAM_THREADS: "" if opt.threads is None else str(opt.threads)}
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    warmup = cfg.model_warmup.add(name=WARMUP_NAME, batch_size=1)
    for input_name, dtype, dims in input_specs(model.info):
        if input_name in model.info.modalities:
            warmup.inputs[input_name].CopyFrom(pb.ModelWarmup.Input(data_type=types[dtype], dims=list(dims),
                                                                     input_data_file=input_name))
    return cfg


def warmup_images(info: EmbedderInfo) -> dict[str, bytes]:
    """{modality: one normalised-looking float32 (3, H, W) image as raw bytes} for the warm-up request (Triton's
    own random_data is random bytes, which include NaN and infinity)."""
    rng = np.random.default_rng(0)
    H, W = info.img_size
    return {m: rng.standard_normal((3, H, W), dtype=np.float32).tobytes() for m in info.modalities}


def write_serve_repository(models: Mapping[str, ServedModel], out_dir: str | Path, opt: ServeOptions) -> Path:
    """Write DIR/<name>/{config.pbtxt, 1/model.py} for every model; returns DIR."""
    out = Path(out_dir)
    for name, model in models.items():
        text = config_text(build_serve_config(name, model, opt), f"config.pbtxt of {name}")
        write_text(out / name / "1" / "model.py", MODEL_PY.format(root=str(Path(graft_edge.__file__).resolve().parents[1])))
        for modality, data in warmup_images(model.info).items():  # Triton reads them from <model>/warmup/
            atomic_write(out / name / "warmup" / modality, lambda tmp, data=data: tmp.write_bytes(data))
        write_text(out / name / "config.pbtxt", text)
    return out
