"""The evaluation protocol's precondition, checked on the file lists before any model runs."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from graft_edge.data.layouts import Sample
from graft_edge.errors import GraftError


def valid_queries(query: Sequence[Sample], gallery: Sequence[Sample]) -> int:
    """Queries with at least one gallery image of their id from another camera (Market-1501 protocol)."""
    cams: dict[int, set[int]] = defaultdict(set)
    for s in gallery:
        cams[s.pid].add(s.camid)
    return sum(1 for q in query if cams.get(q.pid, set()) - {q.camid})


def require_valid_queries(root: str | Path, query: Sequence[Sample], gallery: Sequence[Sample]) -> int:
    """GraftError (naming the data root) when no query can be scored: mAP would be undefined, not 0."""
    n = valid_queries(query, gallery)
    if n == 0:
        pids = {q.pid for q in query} & {g.pid for g in gallery}
        why = ("no query id appears in the gallery" if not pids else
               "every gallery image of a query id comes from the query's own camera (one-camera data?)")
        raise GraftError(f"data root {root}: none of its {len(query)} queries has a valid match ({why}); "
                         "mAP is undefined: evaluation needs query ids seen by another camera in the gallery")
    return n
