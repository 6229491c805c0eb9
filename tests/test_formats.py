"""The format table drives export options, runtime dispatch, the frontier's data needs and report markers."""
from __future__ import annotations

import pytest

from graft_edge.errors import GraftError
from graft_edge.export import ExportOptions
from graft_edge.export.builders import BUILDERS
from graft_edge.formats import (
    ALIASES,
    FORMATS,
    RUNTIME_SUFFIXES,
    by_kind,
    get_format,
    markers,
    needing_calibration,
    runtime_of,
)
from graft_edge.runtime import RUNTIMES


def test_every_row_has_a_builder_and_a_runtime():
    for name, fmt in FORMATS.items():
        assert fmt.runtime in RUNTIMES and fmt.runtime in RUNTIME_SUFFIXES
        assert runtime_of(f"model{fmt.suffix}") == fmt.runtime
        if fmt.runtime in ("onnx", "openvino"):
            assert name in BUILDERS
        if fmt.kind:
            assert by_kind(fmt.kind) is fmt
        if fmt.source is not None:
            assert any(f.precision == fmt.source or f.name == fmt.source for f in FORMATS.values())
    assert len({f.suffix for f in FORMATS.values()}) == len(FORMATS)  # one file name per format


@pytest.mark.parametrize("names,int8,fp16,trt,onnx", [
    (("torch",), (), False, False, False),
    (("onnx", "int8"), ("dynamic",), False, False, True),
    (("int8-static",), ("static",), False, False, False),
    (("trt-int8",), ("static",), False, True, False),
    (("fp16", "trt"), (), True, True, False),
    (("openvino", "openvino-int8"), (), False, False, False),
])
def test_export_options_for_formats_round_trip(names, int8, fp16, trt, onnx):
    opt = ExportOptions.for_formats(names, calib_data="x")
    assert (opt.int8, opt.fp16, opt.trt, opt.onnx) == (int8, fp16, trt, onnx)
    assert opt.openvino == tuple(n.replace("openvino-", "") if "-" in n else "fp32" for n in names
                                 if n.startswith("openvino"))
    wanted = {get_format(n).name for n in names if get_format(n).kind}
    assert wanted <= {f.name for f in opt.formats()}  # everything asked for is built (sources may come along)


def test_calibrated_formats_and_markers_come_from_the_table():
    assert set(needing_calibration()) == {"int8-static", "int8-u8s8", "trt-int8", "openvino-int8"}
    with pytest.raises(GraftError, match="needs --calib-data"):
        ExportOptions.for_formats(["int8-static"]).validated()
    m = markers()
    assert set(m) == set(FORMATS) | set(ALIASES) and m["trt"] == m["trt-fp16"]


def test_unknown_names_and_suffixes_are_one_line():
    with pytest.raises(GraftError, match="unknown format 'tflite'.*torch, onnx"):
        get_format("tflite")
    with pytest.raises(GraftError, match=r"model\.tflite.*\.pt.*\.onnx.*\.engine"):
        runtime_of("model.tflite")
