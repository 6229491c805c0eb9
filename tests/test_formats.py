"""The format table drives export options, runtime dispatch, the frontier's data needs and report markers."""
from __future__ import annotations

import pytest

from graft_edge.cli.export import alias_formats, resolve_formats
from graft_edge.errors import GraftError
from graft_edge.export import ExportOptions
from graft_edge.export.builders import BUILDERS
from graft_edge.formats import ALIASES, FORMATS, by_kind, get_format, markers, needing_calibration, parse_formats
from graft_edge.runtime import RUNTIMES, runtime_of, unavailable


def test_every_row_has_a_builder_and_a_runtime():
    for name, fmt in FORMATS.items():
        assert fmt.runtime in RUNTIMES
        assert runtime_of(f"model{fmt.suffix}") == fmt.runtime
        assert (name in BUILDERS) == bool(fmt.kind)  # every exported format has a builder; torch needs none
        if fmt.kind:
            assert by_kind(fmt.kind) is fmt
    assert len({f.suffix for f in FORMATS.values()}) == len(FORMATS)  # one file name per format


def test_table_order_puts_every_source_before_what_is_built_from_it():
    order = list(FORMATS)
    for name, fmt in FORMATS.items():
        if fmt.source is not None:
            assert fmt.source in FORMATS and order.index(fmt.source) < order.index(name), name


@pytest.mark.parametrize("names, plan", [
    (("onnx", "int8"), ["onnx", "int8"]),
    (("int8-static",), ["onnx", "int8-static"]),
    (("trt-int8",), ["onnx", "int8-static", "trt-int8"]),
    (("trt",), ["onnx", "fp16", "trt-fp16"]),
    (("int8-fused",), ["onnx-fused", "int8-fused"]),  # the fused graph is exported from the model itself
    (("openvino-int8", "openvino"), ["onnx", "openvino", "openvino-int8"]),
])
def test_export_plan_builds_the_sources_and_keeps_what_was_asked(names, plan):
    opt = ExportOptions(formats=names, calib_data="x")
    assert [f.name for f in opt.plan()] == plan
    assert [f.name for f in opt.rows()] == [n for n in plan if n in {get_format(x).name for x in names}]


@pytest.mark.parametrize("flags, names", [
    (dict(onnx=None, int8=["dynamic,static"], fp16=True), ["onnx", "int8", "int8-static", "fp16"]),
    (dict(onnx=False, int8=["both"]), ["int8", "int8-static"]),
    (dict(onnx=None, trt=True, int8=["static"], fp16=True), ["onnx", "int8-static", "fp16", "trt-fp32", "trt-fp16",
                                                             "trt-int8"]),
    (dict(onnx=None, openvino=["all"], fused=["fp32"]), ["onnx", "onnx-fused", "openvino", "openvino-bf16",
                                                          "openvino-int8"]),
])
def test_the_old_flags_are_aliases_of_format_names(flags, names):
    args = dict(onnx=None, int8=None, fused=None, fp16=False, trt=False, openvino=None) | flags
    aliases = alias_formats(**args)
    rows = resolve_formats(None, aliases)
    assert [f.name for f in rows] == [n for n in FORMATS if n in names]


def test_formats_option_keeps_exactly_what_it_lists():
    # the CLI passes onnx=not --formats when --onnx/--no-onnx is not given
    assert [f.name for f in resolve_formats("int8,openvino", alias_formats(False, None, None, False, False,
                                                                            None))] == ["int8", "openvino"]
    assert [f.name for f in resolve_formats("int8", alias_formats(True, None, None, False, False,
                                                                   None))] == ["onnx", "int8"]
    with pytest.raises(GraftError, match="nothing to export"):
        resolve_formats(None, alias_formats(False, None, None, False, False, None))


def test_parse_formats_returns_rows_once():
    rows = parse_formats("torch, onnx,trt,onnx")
    assert rows == (FORMATS["torch"], FORMATS["onnx"], FORMATS["trt-fp16"])
    assert parse_formats(rows) == rows  # rows pass through: a list is parsed once, at the edge


def test_calibrated_formats_and_markers_come_from_the_table():
    assert set(needing_calibration()) == {"int8-static", "int8-u8s8", "trt-int8", "openvino-int8"}
    with pytest.raises(GraftError, match="needs --calib-data"):
        ExportOptions(formats=("trt-int8",)).validated()  # through its source int8-static
    m = markers()
    assert set(m) == set(FORMATS) | set(ALIASES) and m["trt"] == m["trt-fp16"]


def test_availability_reads_the_needs_columns(monkeypatch):
    import sys

    from graft_edge.runtime import registry, tensorrt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(tensorrt_backend, "nvidia_gpu_available", lambda: False)
    why = unavailable(FORMATS["trt-fp32"])
    assert "tensorrt package is not installed" in why and "no NVIDIA GPU" in why
    monkeypatch.setattr(registry, "has_bf16", lambda: False)
    assert "neither AVX512-BF16 nor AMX" in unavailable(FORMATS["openvino-bf16"])
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert "nncf package is not installed" in unavailable(FORMATS["openvino-int8"])
    assert unavailable(FORMATS["int8"]) is None


def test_unknown_names_and_suffixes_are_one_line():
    with pytest.raises(GraftError, match="unknown format 'tflite'.*torch, onnx"):
        get_format("tflite")
    with pytest.raises(GraftError, match=r"model\.tflite.*\.pt.*\.onnx.*\.engine"):
        runtime_of("model.tflite")
