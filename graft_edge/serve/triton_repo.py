"""`graft-edge export --triton DIR`: a model repository for a standalone Triton Inference Server.

One model per artefact, named like `graft-edge serve` names it (file name without its suffix):
  DIR/<name>/config.pbtxt
  DIR/<name>/1/model.onnx (+ its external-data file)   ONNX Runtime backend
  DIR/<name>/1/model.plan                              TensorRT backend (an engine runs only on the GPU
                                                       model and TensorRT version it was built with)
config.pbtxt comes from the artefact's metadata: input/output names and per-sample dims, the dynamic
batch range (max_batch_size, capped by a TensorRT engine's profile), dynamic batching and instance
groups. It is built as Triton's own ModelConfig protobuf (shipped by tritonclient), written as text and
parsed back before it counts as written. A standalone Triton runs the graph as it is: every input is
required, so a client with a missing sensor sends zeros for it and 0 in its column of `present`.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from graft_edge.artefact.record import ArtefactMeta
from graft_edge.errors import GraftError
from graft_edge.fileio import write_text
from graft_edge.runtime import artefact_files, read_metadata
from graft_edge.serve.triton_config import model_config_pb2, model_name, parse_config


@dataclass(frozen=True)
class RepoOptions:
    """Serving settings written into every config.pbtxt."""

    max_batch: int = 64
    queue_delay_us: int = 2000
    instances: int = 1
    gpu: bool = False  # ONNX models on KIND_GPU (TensorRT engines always are)

    def validated(self) -> RepoOptions:
        if self.max_batch < 1 or self.instances < 1 or self.queue_delay_us < 0:
            raise GraftError(f"--triton-max-batch {self.max_batch} / --triton-instances {self.instances} / "
                             f"--triton-queue-delay-us {self.queue_delay_us}: expected positive counts, delay >= 0")
        return self


def _backend(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in (".engine", ".plan"):
        return "tensorrt"
    raise GraftError(f"{path}: only .onnx and TensorRT engines (.engine/.plan) go into a Triton repository "
                     "(serve a .pt checkpoint with `graft-edge serve`)")


def build_config(name: str, meta: ArtefactMeta, backend: str, opt: RepoOptions) -> Any:
    """The ModelConfig message of one artefact."""
    pb = model_config_pb2()
    cfg = pb.ModelConfig(name=name)
    if backend == "onnxruntime":
        cfg.backend = "onnxruntime"
    else:
        cfg.platform = "tensorrt_plan"
    max_batch = opt.max_batch
    if meta.batch is not None:
        if meta.batch.min > 1:
            raise GraftError(f"{name}: its engine's batch profile starts at {meta.batch.min}; Triton's dynamic batcher "
                             "sends batches from 1 (re-export with --batch 1:OPT:MAX)")
        max_batch = min(max_batch, meta.batch.max)
    cfg.max_batch_size = max_batch
    H, W = meta.img_size
    for m in meta.modalities:
        cfg.input.add(name=m, data_type=pb.TYPE_FP32, dims=[3, H, W])
    if meta.presence_input:
        cfg.input.add(name=meta.presence_input, data_type=pb.TYPE_FP32, dims=[len(meta.modalities)])
    cfg.output.add(name=meta.output_name, data_type=pb.TYPE_FP32, dims=[meta.embed_dim])
    cfg.dynamic_batching.max_queue_delay_microseconds = opt.queue_delay_us
    gpu = backend == "tensorrt" or opt.gpu
    cfg.instance_group.add(count=opt.instances, kind=pb.ModelInstanceGroup.KIND_GPU if gpu else
                           pb.ModelInstanceGroup.KIND_CPU)
    cfg.default_model_filename = "model.onnx" if backend == "onnxruntime" else "model.plan"
    return cfg


def _copy_model(path: Path, version_dir: Path, backend: str) -> list[Path]:
    """Copy the artefact (and an ONNX's external data, under its recorded name) into the version folder."""
    version_dir.mkdir(parents=True, exist_ok=True)
    files = artefact_files(path)
    dest = version_dir / ("model.onnx" if backend == "onnxruntime" else "model.plan")
    copied = []
    for f in files:
        target = dest if f == path else version_dir / f.name
        shutil.copyfile(f, target)
        copied.append(target)
    return copied


def write_repository(artefacts: Sequence[str | Path], out_dir: str | Path,
                     opt: RepoOptions | None = None) -> dict[str, Path]:
    """Write DIR/<name>/{config.pbtxt, 1/model.*} for every artefact; {model name: its folder}."""
    from google.protobuf import text_format

    opt = (opt or RepoOptions()).validated()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GraftError(f"--triton {out} exists and is not a folder")
    written: dict[str, Path] = {}
    for path in map(Path, artefacts):
        backend = _backend(path)
        name = model_name(path)
        if name in written:
            raise GraftError(f"{path}: two artefacts would both be Triton model {name!r}")
        meta = ArtefactMeta.from_dict(read_metadata(path), str(path))
        text = text_format.MessageToString(build_config(name, meta, backend, opt))
        parsed = parse_config(text, f"config.pbtxt of {name}")
        if parsed.name != name or len(parsed.input) != len(meta.input_names or meta.modalities):
            raise GraftError(f"config.pbtxt of {name} does not round-trip through Triton's protobuf")
        model_dir = out / name
        _copy_model(path, model_dir / "1", backend)
        write_text(model_dir / "config.pbtxt", text)
        written[name] = model_dir
    return written
