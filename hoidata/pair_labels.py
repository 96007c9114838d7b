"""Ground-truth labels of candidate pairs and images: what the supervised references learn from.

A candidate pair (a detected human and object) takes the HOI classes of every ground-truth
pair of its image that it matches by the evaluation's rule: min(IoU_h, IoU_o) >= 0.5, with
IoU computed as the official code does (1-based inclusive pixels, +1 widths; see
:func:`hoidata.evaluation.overlap_pixel1`). A pair that matches none takes no class: a
negative. An image takes the classes of all its ground-truth pairs.

Only the boxes decide a match, not the detected object's class: a pair whose object was
detected as another category still matches, and the caller intersects its classes with
those of the detected object (none left: it could only be a false positive at test time).
"""

from __future__ import annotations

import numpy as np

from . import boxes as B
from . import ragged
from .evaluation import MIN_OVERLAP, overlap_pixel1


def match_pairs(pair_offsets: np.ndarray, boxes_h: np.ndarray, boxes_o: np.ndarray, gt_offsets: np.ndarray,
                gt_h: np.ndarray, gt_o: np.ndarray, min_overlap: float = MIN_OVERLAP) -> tuple[np.ndarray, np.ndarray]:
    """Every (candidate pair, ground-truth pair) of the same image that match.

    pair_offsets int64 [N + 1] (CSR by image) over candidate boxes_h, boxes_o float [P, 4];
    gt_offsets int64 [N + 1] over gt_h, gt_o float [G, 4]; all boxes ``coord``. Returns
    (pair int64 [M], gt int64 [M]) row indices, by pair then ground truth.
    """
    n_pairs, n_gt = np.diff(pair_offsets), np.diff(gt_offsets)
    cand = n_pairs * n_gt                                           # pair x gt combinations per image
    owner = ragged.owners(cand)
    k = ragged.within(cand)                                         # position within the image's grid
    pair = pair_offsets[owner] + k // np.maximum(n_gt[owner], 1)
    gt = gt_offsets[owner] + k % np.maximum(n_gt[owner], 1)
    if not len(pair):
        return pair, gt
    px = lambda b: B.convert(b, "coord", "pixel1")  # noqa: E731
    ov = np.minimum(overlap_pixel1(px(boxes_h[pair]), px(gt_h[gt])), overlap_pixel1(px(boxes_o[pair]), px(gt_o[gt])))
    keep = ov >= min_overlap
    return pair[keep], gt[keep]


def pair_labels(pair_offsets: np.ndarray, boxes_h: np.ndarray, boxes_o: np.ndarray, gt_offsets: np.ndarray,
                gt_h: np.ndarray, gt_o: np.ndarray, gt_hoi: np.ndarray, num_classes: int) -> np.ndarray:
    """bool [P, C]: the classes of the ground-truth pairs each candidate matches (see
    :func:`match_pairs`; gt_hoi int [G]); a row of False is a negative."""
    labels = np.zeros((len(boxes_h), num_classes), dtype=bool)
    pair, gt = match_pairs(pair_offsets, boxes_h, boxes_o, gt_offsets, gt_h, gt_o)
    labels[pair, np.asarray(gt_hoi, np.int64)[gt]] = True
    return labels


def image_labels(gt_offsets: np.ndarray, gt_hoi: np.ndarray, num_classes: int) -> np.ndarray:
    """bool [N, C]: the classes of each image's ground-truth pairs (gt_offsets int64 [N + 1], gt_hoi int [G])."""
    labels = np.zeros((len(gt_offsets) - 1, num_classes), dtype=bool)
    labels[ragged.owners(np.diff(gt_offsets)), np.asarray(gt_hoi, np.int64)] = True
    return labels
