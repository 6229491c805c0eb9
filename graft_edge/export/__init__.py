"""Export for deployment: one artefact per format of graft_edge.formats, each checked and self-describing.

    from graft_edge.export import ExportOptions, export_model
    result = export_model("run/best.pt", "deploy/", ExportOptions(formats=("onnx", "int8", "int8-static"), calib_data="data/"))
    result.get("onnx-fp32").parity["max_abs_diff"]

Building blocks: export.onnx.export_onnx, export.quantize.quantize_dynamic_int8 / quantize_static_int8,
export.fp16.convert_fp16, export.tensorrt.build_engine; export.builders maps each format to its builder.
"""
from graft_edge.export.options import ExportOptions
from graft_edge.export.pipeline import Artefact, ExportFailed, ExportResult, export_model

__all__ = ["Artefact", "ExportFailed", "ExportOptions", "ExportResult", "export_model"]
