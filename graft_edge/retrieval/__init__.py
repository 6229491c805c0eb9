"""Retrieval beyond one distance matrix: k-reciprocal re-ranking, a persistent gallery index, ranked-result strips.

Only `rerank` (numpy/scipy) is imported here, so lower layers such as `graft_edge.metrics` can use it;
`graft_edge.retrieval.index` and `.visualize` are imported where needed.
"""
from graft_edge.retrieval.rerank import rerank, rerank_features

__all__ = ["rerank", "rerank_features"]
