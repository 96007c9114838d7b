"""Object detection quality: box AP at IoU 0.5 per category, against HOI ground truth.

HOI annotations list box pairs; the objects a detector should find are every distinct
human box and object box among an image's pairs (a person in three pairs is one person).
:func:`ground_truth_boxes` takes them out; :func:`box_ap` scores detections against them
the PASCAL VOC way (VOC 2010 and later, and COCO's AP50 up to its 101-point sampling):
per category, detections of all images by descending score, each matched to the
ground-truth box of its image and category it overlaps most, a true positive when that
IoU is >= 0.5 and the box was not taken by a higher-scoring detection (a false positive
otherwise: duplicates count against), AP = the area under the precision-recall curve with
precision made monotone (all points). Boxes are ``coord`` (continuous): the
IoU is of areas, without the +1 pixel of the MATLAB conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import boxes as B
from .annotations import Annotations
from .detections import Detections, DetectionsError


@dataclass
class BoxAP:
    """Per-category AP (NaN where a category has no ground truth) and their mean."""

    ap: np.ndarray          # float64 [O]
    num_gt: np.ndarray      # int64 [O]
    num_dets: np.ndarray    # int64 [O]
    iou: float

    @property
    def mean(self) -> float:
        """Mean AP over the categories with ground truth."""
        have = self.num_gt > 0
        return float(self.ap[have].mean()) if have.any() else float("nan")

    def as_dict(self, names) -> dict:
        return {"iou": self.iou, "mAP": self.mean,
                "per_category": {n: {"ap": None if np.isnan(a) else float(a), "gt": int(g), "dets": int(d)}
                                 for n, a, g, d in zip(names, self.ap, self.num_gt, self.num_dets)}}


def ground_truth_boxes(ann: Annotations, human: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Distinct boxes of each image: boxes float64 [k, 4] coord and labels int64 [k] (``human``
    for human boxes, the pair's object otherwise); a box is distinct by (box, label)."""
    boxes, labels = [], []
    for i in range(len(ann)):
        p = ann.pairs_of(i)
        rows = np.concatenate([np.column_stack([p["boxes_h"], np.full(len(p["hoi"]), human)]),
                               np.column_stack([p["boxes_o"], p["object"]])]).reshape(-1, 5)
        rows = np.unique(rows, axis=0)
        boxes.append(rows[:, :4])
        labels.append(rows[:, 4].astype(np.int64))
    return boxes, labels


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [n, m] IoU of coord boxes a [n, 4] and b [m, 4] (0 where both are empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = B.area_coord(a)[:, None] + B.area_coord(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(tp: np.ndarray, num_gt: int) -> float:
    """All-point AP of detections already sorted by descending score (``tp`` bool [D])."""
    if num_gt == 0:
        return float("nan")
    tp = np.asarray(tp, bool)
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall = np.concatenate([[0.0], ctp / num_gt])
    precision = np.concatenate([[1.0], ctp / np.maximum(ctp + cfp, 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the best precision at this recall or more
    return float(np.sum(np.diff(recall) * precision[1:]))


def box_ap(dets: Detections, ann: Annotations, num_objects: int, human: int, iou: float = 0.5) -> BoxAP:
    """Box AP at ``iou`` per category of ``dets`` against the distinct boxes of ``ann``.

    Images are matched by file name; an annotated image without detections counts as having
    none, a detected image without annotations is an error.
    """
    where = {name: i for i, name in enumerate(ann.file_names)}
    extra = [f for f in dets.file_names if f not in where]
    if extra:
        raise DetectionsError(f"{len(extra)} detected image(s) are not in the annotations, e.g. {extra[0]}")
    gt_boxes, gt_labels = ground_truth_boxes(ann, human)
    ap = np.full(num_objects, np.nan)
    num_gt = np.bincount(np.concatenate(gt_labels + [np.zeros(0, np.int64)]), minlength=num_objects)[:num_objects]
    num_dets = np.bincount(dets.labels, minlength=num_objects)[:num_objects]
    img = np.array([where[f] for f in dets.file_names], np.int64)[dets.image_of_detection]
    for c in range(num_objects):
        rows = np.flatnonzero(dets.labels == c)
        rows = rows[np.argsort(-dets.scores[rows], kind="stable")]
        tp = _match_category(dets.boxes[rows], img[rows], gt_boxes, gt_labels, c, iou)
        ap[c] = average_precision(tp, int(num_gt[c]))
    return BoxAP(ap, num_gt.astype(np.int64), num_dets.astype(np.int64), iou)


def _match_category(boxes: np.ndarray, img: np.ndarray, gt_boxes, gt_labels, c: int, iou: float) -> np.ndarray:
    """bool [D]: which detections of category ``c`` (boxes [D, 4] by descending score, their
    images img [D]) are true positives. Images are independent, so each is matched alone, its
    detections in score order: a detection takes the ground-truth box it overlaps most, if
    that IoU is >= ``iou`` and no higher-scoring detection took it (else a false positive)."""
    tp = np.zeros(len(boxes), bool)
    for i in np.unique(img).tolist():
        gt = gt_boxes[i][gt_labels[i] == c]
        if not len(gt):
            continue
        rows = np.flatnonzero(img == i)
        taken = np.zeros(len(gt), bool)
        for r, overlaps in zip(rows, iou_matrix(boxes[rows], gt)):
            j = int(np.argmax(overlaps))
            if overlaps[j] >= iou and not taken[j]:
                tp[r] = taken[j] = True
    return tp
