"""A plain, line-by-line port of the official MATLAB evaluation loops.

Slow on purpose: per class, per detection, per ground-truth pair, exactly as
``eval_one.m`` and ``VOCevaldet_bboxpair.m`` iterate. The tests use it as the oracle for
:mod:`hoidata.evaluation`; ``make bench`` uses it as the baseline the vectorised
evaluator is compared with.
"""

from __future__ import annotations

import numpy as np

from . import boxes as B
from .annotations import Annotations
from .evaluation import MIN_OVERLAP, THRESHOLDS
from .labelspace import LabelSpace
from .predictions import Predictions


def _iou(bb, gt) -> float:
    iw = min(bb[2], gt[2]) - max(bb[0], gt[0]) + 1
    ih = min(bb[3], gt[3]) - max(bb[1], gt[1]) + 1
    if iw > 0 and ih > 0:
        ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - iw * ih
        return iw * ih / ua
    return 0.0


def voc_evaldet_bboxpair(det_id, det_bb, det_conf, gt_bbox):
    """det_id [D] image of each detection; det_bb [D, 8]; det_conf [D]; gt_bbox: per image [k, 8]."""
    npos = sum(len(g) for g in gt_bbox)
    matched = [np.zeros(len(g), dtype=bool) for g in gt_bbox]
    si = np.argsort(-np.asarray(det_conf, dtype=np.float64), kind="stable")
    tp, fp = np.zeros(len(si)), np.zeros(len(si))
    for d, k in enumerate(si):
        i, bb = det_id[k], det_bb[k]
        ov_max, j_max = -np.inf, -1
        for j, g in enumerate(gt_bbox[i]):
            min_ov = min(_iou(bb[:4], g[:4]), _iou(bb[4:], g[4:]))
            if min_ov > ov_max:
                ov_max, j_max = min_ov, j
        if ov_max >= MIN_OVERLAP:
            if not matched[i][j_max]:
                tp[d] = 1
                matched[i][j_max] = True
            else:
                fp[d] = 1
        else:
            fp[d] = 1
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / npos if npos else np.full(len(tp), np.nan)
    prec = tp / (fp + tp)
    ap = 0.0
    for t in THRESHOLDS:
        sel = prec[rec >= t]
        p = sel.max() if len(sel) else 0.0
        ap = ap + p / 11
    return rec, prec, ap


def reference_evaluate(gt: Annotations, pred: Predictions, labelspace: LabelSpace,
                       known_object: bool = False, classes=None, image_labels=None) -> np.ndarray:
    """float64 [C] AP per class (NaN where a class has no ground truth or was not asked for).

    ``image_labels``: bool [N, O]; with ``known_object``, the images kept for object o are
    those of column o (``iid`` in eval_one.m) instead of the images holding a pair of o."""
    C = labelspace.num_classes
    index = gt.index_of()
    p_img = np.array([index[n] for n in pred.file_names], dtype=np.int64)[pred.image]
    p_bb = np.concatenate([B.convert(pred.boxes_h, pred.box_format, "pixel1"),
                           B.convert(pred.boxes_o, pred.box_format, "pixel1")], 1)
    g_bb = np.concatenate([B.convert(gt.boxes_h, "coord", "pixel1"), B.convert(gt.boxes_o, "coord", "pixel1")], 1)
    g_img = gt.image_of_pair
    # the detection list of eval_one.m: image by image in annotation order, rows in file order
    by_image = np.lexsort((np.arange(len(p_img)), p_img))
    ap = np.full(C, np.nan)
    for c in (range(C) if classes is None else classes):
        gmask = gt.hoi == c
        if not gmask.any():
            continue
        gt_bbox = [[] for _ in range(len(gt))]
        for g in np.flatnonzero(gmask):
            gt_bbox[g_img[g]].append(g_bb[g])
        sel = by_image[pred.hoi[by_image] == c]
        if known_object:
            obj = labelspace.hoi[c][1]
            images_with = set((g_img[gt.object == obj] if image_labels is None
                               else np.flatnonzero(image_labels[:, obj])).tolist())
            sel = np.array([k for k in sel if p_img[k] in images_with], dtype=np.int64)
        if len(sel) == 0:
            ap[c] = 0.0
            continue
        _, _, ap[c] = voc_evaldet_bboxpair(p_img[sel], p_bb[sel], pred.score[sel], gt_bbox)
    return ap
