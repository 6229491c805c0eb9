"""`graft-edge export --triton DIR`: a Triton model repository whose config.pbtxt parses with Triton's protobuf."""
from __future__ import annotations

import json

import pytest
from _export_fixtures import make_checkpoint
from typer.testing import CliRunner

from graft_edge.artefact.record import ArtefactMeta, BatchRange
from graft_edge.cli.main import app
from graft_edge.errors import GraftError
from graft_edge.serve.triton_repo import RepoOptions, build_config, parse_config

pytest.importorskip("tritonclient.grpc.model_config_pb2")

META = ArtefactMeta(modalities=("rgb", "nir", "tir"), img_size=(32, 64), mean=(0.5,) * 3, std=(0.5,) * 3,
                    embed_dim=32, precision="fp16", input_names=("rgb", "nir", "tir", "present"),
                    presence_input="present", batch=BatchRange(1, 8, 16))


@pytest.mark.slow
def test_export_writes_a_repository_triton_parses(tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    ckpt = make_checkpoint(tmp_path / "tiny.pt", ("rgb", "nir"))
    res = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "exp"), "--int8", "dynamic",
                                   "--triton", str(tmp_path / "repo"), "--triton-max-batch", "32",
                                   "--triton-instances", "2", "--triton-queue-delay-us", "500"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["model", "model.int8-dynamic"]
    for name in ("model", "model.int8-dynamic"):
        cfg = parse_config((tmp_path / "repo" / name / "config.pbtxt").read_text(), name)
        assert cfg.name == name and cfg.backend == "onnxruntime" and cfg.max_batch_size == 32
        assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [
            ("rgb", [3, 32, 64], pb.TYPE_FP32), ("nir", [3, 32, 64], pb.TYPE_FP32), ("present", [2], pb.TYPE_FP32)]
        assert [(o.name, list(o.dims)) for o in cfg.output] == [("embedding", [32])]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
        model = tmp_path / "repo" / name / "1" / "model.onnx"
        src = tmp_path / "exp" / f"{name}.onnx"
        assert model.read_bytes() == src.read_bytes()
    assert json.loads((tmp_path / "exp" / "model.json").read_text())["presence_input"] == "present"


def test_engine_config_caps_the_batch_at_its_profile():
    from tritonclient.grpc import model_config_pb2 as pb

    cfg = build_config("model.trt-fp16", META, "tensorrt", RepoOptions(max_batch=64))
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16 and cfg.default_model_filename == "model.plan"
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    with pytest.raises(GraftError, match="batch profile starts at 4"):
        build_config("m", ArtefactMeta(**{**META.__dict__, "batch": BatchRange(4, 8, 16)}), "tensorrt", RepoOptions())


def test_parse_config_names_a_broken_file():
    with pytest.raises(GraftError, match="m is not a valid Triton model config"):
        parse_config('name: "m"\nmax_batch_size: lots\n', "m")
