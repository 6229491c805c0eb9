"""Serving graft-edge artefacts: a Triton Inference Server through PyTriton, a closed-loop load test, and
Triton model repositories for a standalone server. PyTriton and tritonclient are optional (the `serve` extra)."""
