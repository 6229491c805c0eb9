"""graft-edge: GraFT multimodal ReID from training to a pruned, exported, measured edge model.

The functions a Python user starts from (each is the library call behind a CLI command)::

    import graft_edge as ge
    cfg = ge.get_preset("synthetic")                                   # or rgbnt100, rgbn300, ...
    ge.run_training(cfg, "data/", "run/")                              # graft-edge train
    ge.run_prune("run/best.pt", "pruned.pt", ge.PruneRequest(target="60%", data="data/", finetune_epochs=1))
    ge.export_model("pruned.pt", "exp/", ge.ExportOptions(formats=("onnx", "int8")))
    embedder = ge.load_embedder("exp/model.int8-dynamic.onnx")        # any checkpoint or artefact
    print(ge.evaluate_embedder(embedder, "data/")["mAP"])              # graft-edge eval

They are resolved on first use, so importing one submodule (say, the runtime on an edge device) does
not import the training or pruning stack.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "GraftError": "graft_edge.errors",
    "get_preset": "graft_edge.config",
    "GraftConfig": "graft_edge.config",
    "write_synthetic": "graft_edge.data.synthetic",
    "build_model": "graft_edge.model",
    "load_model": "graft_edge.checkpoint",
    "save_checkpoint": "graft_edge.checkpoint",
    "run_training": "graft_edge.train",
    "finetune": "graft_edge.train",
    "prune_to_target": "graft_edge.compress",
    "PruneSpec": "graft_edge.compress",
    "run_prune": "graft_edge.workflows.prune",
    "PruneRequest": "graft_edge.workflows.prune",
    "export_model": "graft_edge.export",
    "ExportOptions": "graft_edge.export",
    "load_embedder": "graft_edge.runtime",
    "evaluate_embedder": "graft_edge.evaluation",
    "evaluate_rank": "graft_edge.retrieval.metrics",
    "run_frontier": "graft_edge.workflows.frontier",
    "FrontierSettings": "graft_edge.workflows.frontier",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    """Import the defining module of a public name on first use."""
    if name not in _API:
        raise AttributeError(f"module 'graft_edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
