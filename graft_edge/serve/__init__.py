"""Serving graft-edge artefacts: Triton Inference Server (the nvidia-pytriton wheel's `tritonserver`, Python backend)
answering request by request, a closed-loop load test, and Triton model repositories for a standalone server.
nvidia-pytriton and tritonclient are optional (the `serve` extra)."""
