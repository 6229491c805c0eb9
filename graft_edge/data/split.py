"""The validation split: a seeded fraction of the training identities held out for model selection.

The official GraFT code trains on 80% of the training ids and validates on the rest (`train_ratio: 0.8`),
so the query/gallery test split is only ever reported, never used to pick a checkpoint or a trial.
Validation identities are evaluated as their own query/gallery under the Market-1501 rule that
`metrics.evaluate_rank` applies (a query's gallery matches from its own camera do not count): per
identity, one seeded image per camera becomes a query as long as every query keeps a gallery match
from another camera; identities seen by one camera only go to the gallery (distractors).

A gallery of a few held-out ids alone is too easy to rank anything (mAP near 100 whatever the model), so the
gallery also holds distractors: up to `distractors` images of every identity that stays in training (seeded,
spread over its cameras). They are never positives for a validation query (other ids), so validation ranks
the held-out ids against as many identities as the test gallery does and its mAP can move with the model's.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from graft_edge.data.layouts import Sample, relabel
from graft_edge.errors import GraftError


@dataclass(frozen=True)
class TrainValSplit:
    """Training samples (relabelled 0..N-1) and the held-out ids' query/gallery samples (label = pid)."""

    train: tuple[Sample, ...]
    val_query: tuple[Sample, ...]
    val_gallery: tuple[Sample, ...]
    val_ids: tuple[int, ...]  # held-out pids, sorted
    distractors: int = 0  # how many of val_gallery's images are training ids' (the last ones)

    @property
    def has_val(self) -> bool:
        """True when some identities are held out and at least one validation query exists."""
        return bool(self.val_query)


def val_id_count(num_ids: int, fraction: float) -> int:
    """How many of `num_ids` training ids a fraction holds out: round(fraction x ids), at least 1 when > 0."""
    if not 0.0 <= fraction < 1.0:
        raise GraftError(f"data.val_fraction={fraction}: expected a fraction in [0, 1) (0 disables validation)")
    if fraction == 0.0:
        return 0
    return max(1, math.floor(fraction * num_ids + 0.5))


def held_out_ids(pids: Sequence[int], fraction: float, seed: int) -> tuple[int, ...]:
    """The validation pids: a seeded draw of val_id_count(...) of the distinct training pids, sorted."""
    distinct = sorted({int(p) for p in pids})
    count = val_id_count(len(distinct), fraction)
    if count == 0:
        return ()
    if count >= len(distinct) - 1:
        raise GraftError(f"data.val_fraction={fraction} holds out {count} of {len(distinct)} training ids; "
                         "at least 2 must stay for training (lower it, or 0 disables validation)")
    rng = np.random.default_rng([int(seed), 0x5A1])
    return tuple(sorted(int(p) for p in rng.choice(distinct, size=count, replace=False)))


def _query_gallery(samples: list[Sample], rng: np.random.Generator) -> tuple[list[Sample], list[Sample]]:
    """One identity's images -> (queries, gallery): one seeded query per camera while each keeps a cross-camera match."""
    by_cam: dict[int, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.camid, s.frame, str(s.sources[0].path))):
        by_cam.setdefault(s.camid, []).append(s)
    if len(by_cam) < 2:
        return [], list(samples)
    picks = {cam: items[int(rng.integers(len(items)))] for cam, items in by_cam.items()}
    queries: list[Sample] = []
    for cam in sorted(by_cam):
        trial = queries + [picks[cam]]
        left = [s for s in samples if all(s is not q for q in trial)]
        if all(any(g.camid != q.camid for g in left) for q in trial):
            queries = trial
    gallery = [s for s in samples if all(s is not q for q in queries)]
    return queries, gallery


def _distractors(samples: Sequence[Sample], per_id: int, rng: np.random.Generator) -> list[Sample]:
    """Up to `per_id` images of each identity (seeded, one camera after another so they span its cameras)."""
    by_id: dict[int, dict[int, list[Sample]]] = {}
    for s in sorted(samples, key=lambda s: (s.pid, s.camid, s.frame, str(s.sources[0].path))):
        by_id.setdefault(s.pid, {}).setdefault(s.camid, []).append(s)
    out: list[Sample] = []
    for pid in sorted(by_id):
        queues = [[cam_items[int(k)] for k in rng.permutation(len(cam_items))] for cam_items in by_id[pid].values()]
        picked: list[Sample] = []
        while len(picked) < per_id and any(queues):
            for q in queues:
                if q and len(picked) < per_id:
                    picked.append(q.pop(0))
        out += [replace(s, label=s.pid) for s in picked]
    return out


def split_train_val(samples: Sequence[Sample], fraction: float, seed: int, distractors: int = 0) -> TrainValSplit:
    """Hold out a seeded `fraction` of the training ids; the rest are relabelled 0..N-1 (the classifier's width).

    `distractors`: images per remaining (training) identity added to the validation gallery, never as positives.
    """
    val_ids = held_out_ids([s.pid for s in samples], fraction, seed)
    chosen = set(val_ids)
    train = relabel(s for s in samples if s.pid not in chosen)
    rng = np.random.default_rng([int(seed), 0x5A2])
    query: list[Sample] = []
    gallery: list[Sample] = []
    for pid in val_ids:
        q, g = _query_gallery([s for s in samples if s.pid == pid], rng)
        query += [replace(s, label=s.pid) for s in q]
        gallery += [replace(s, label=s.pid) for s in g]
    extra = []
    if val_ids and distractors > 0:
        kept = [s for s in samples if s.pid not in chosen]
        extra = _distractors(kept, distractors, np.random.default_rng([int(seed), 0x5A3]))
    return TrainValSplit(tuple(train), tuple(query), tuple(gallery + extra), val_ids, len(extra))
