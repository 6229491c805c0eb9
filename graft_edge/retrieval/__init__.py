"""Deployment-side retrieval: a persistent gallery index (FAISS) over any artefact, and ranked-result strips.

k-reciprocal re-ranking itself is numeric and lives low in the stack (`graft_edge.retrieval.rerank`, re-exported by
`graft_edge.retrieval.metrics`); this package sits above the runtime layer.
"""
