"""The pair rule: which human-object pairs of an image are scored, from its detections.

The teacher cache stores the pairs this rule produces and the student scores the same
pairs at test time, so it is recorded in the cache and compared on reuse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hoicore.errors import InputError
from hoicore.options import check_fields, option

from . import ragged


@dataclass(frozen=True)
class PairRule:
    """Humans x objects after score thresholds and per-image caps (UPT-like defaults). Each
    field's help and bounds are the command line's (``hoi teacher-cache``)."""

    human_score: float = option(0.2, "Pair rule: minimum person detection score.", minimum=0, maximum=1)
    object_score: float = option(0.2, "Pair rule: minimum object detection score (people included).", minimum=0,
                                 maximum=1)
    max_humans: int = option(15, "Pair rule: humans per image, highest scores first.", minimum=1)
    max_objects: int = option(15, "Pair rule: objects per image, highest scores first (a person may be both).",
                              minimum=1)

    def __post_init__(self):
        check_fields(self, InputError)

    def as_dict(self) -> dict:
        return asdict(self)


def make_pairs(scores: np.ndarray, labels: np.ndarray, offsets: np.ndarray, human: int,
               rule: PairRule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs of every image.

    scores float [T], labels int [T], offsets int64 [N+1] (CSR over images).
    Returns (human_row int64 [P], object_row int64 [P], pair_offsets int64 [N+1]):
    global detection rows, grouped by image in image order; within an image, humans in
    descending score, then objects in descending score. A detection is never paired
    with itself.
    """
    hum, obj, counts = [], [], []
    for i in range(len(offsets) - 1):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        s, lab = scores[lo:hi], labels[lo:hi]
        order = np.argsort(-s, kind="stable")
        h = order[(lab[order] == human) & (s[order] >= rule.human_score)][: rule.max_humans] + lo
        o = order[s[order] >= rule.object_score][: rule.max_objects] + lo
        hh, oo = np.repeat(h, len(o)), np.tile(o, len(h))
        keep = hh != oo
        hum.append(hh[keep])
        obj.append(oo[keep])
        counts.append(int(keep.sum()))
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(hum), cat(obj), ragged.offsets(counts)
