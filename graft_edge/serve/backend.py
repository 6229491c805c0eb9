"""graft-edge's model for Triton's Python backend: every model of `graft-edge serve` runs this class.

Triton's dynamic batcher hands `execute` a list of requests; the answer is one InferenceResponse per
request (Triton's own per-request contract), each carrying either that request's embeddings or its own
error (serve.batching decides which). `initialize` opens the artefact named in the model config's
parameters with graft-edge's runtime layer, in the Python-backend stub process of this instance.
`triton_python_backend_utils` exists only inside that process, so it is imported where it is used.
"""
from __future__ import annotations

import json
from typing import Any

from graft_edge.errors import GraftError, one_line
from graft_edge.runtime import load_embedder
from graft_edge.serve.batching import RequestAssembler, embed_requests

PARAM_ARTEFACT = "graft_edge_artefact"  # model-config parameters written by serve.repository
PARAM_DEVICE = "graft_edge_device"
PARAM_THREADS = "graft_edge_threads"


def config_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """{name: string value} of a Triton model config's `parameters`."""
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


class TritonPythonModel:
    """The Python-backend model: one runtime session per Triton model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config_parameters(config)
        threads = int(params[PARAM_THREADS]) if params.get(PARAM_THREADS) else None
        self.embedder = load_embedder(params[PARAM_ARTEFACT], device=params.get(PARAM_DEVICE) or "cpu",
                                      threads=threads)
        self.assemble = RequestAssembler(self.embedder.info)
        self.input_names = [i["name"] for i in config["input"]]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb

        inputs = []
        for request in requests:
            tensors = {name: pb.get_input_tensor_by_name(request, name) for name in self.input_names}
            inputs.append({name: t.as_numpy() for name, t in tensors.items() if t is not None})
        try:
            answers = embed_requests(self.embedder, self.assemble, inputs)
        except Exception as exc:  # a runtime failure, not a bad request: every request of the batch gets it
            error = pb.TritonError(f"inference failed: {one_line(exc)}")
            return [pb.InferenceResponse(error=error) for _ in requests]
        return [pb.InferenceResponse(error=pb.TritonError(str(a), pb.TritonError.INVALID_ARG))
                if isinstance(a, GraftError) else pb.InferenceResponse(output_tensors=[pb.Tensor(self.output_name, a)])
                for a in answers]
