"""HICO-DET mAP exactly as the official MATLAB code computes it (ho-rcnn ``eval_one.m``
and ``VOCevaldet_bboxpair.m``), vectorised.

The rules, each reproduced here (``hoidata/reference_eval.py`` is a line-by-line port of
the MATLAB loops, used by the tests as the oracle and by ``make bench`` as the baseline):

- every image of the annotations counts, including images without any pair;
- ground truth is compared in the 1-based inclusive pixel frame; IoU uses +1 widths and
  heights and needs a positive overlap in both directions;
- detections of a class are sorted by descending score with a stable sort over the
  detection list in image order, then row order;
- each detection takes the ground-truth pair of its image and class with the largest
  min(IoU_h, IoU_o) (the first maximum); >= 0.5 and still unmatched is a true positive,
  otherwise a false positive (no fall-back to the next-best pair);
- AP is 11-point interpolated over MATLAB's ``0:0.1:1`` thresholds, summed as
  ``ap = ap + p/11`` in that order; a class with no detections has AP 0;
- Known-Object keeps, for a class of object o, only detections in images with a
  ground-truth pair of object o.

One deviation, which never applies to HICO-DET (every class has test pairs): a class
without any ground-truth pair has AP NaN and is left out of the means (MATLAB would
divide by zero and count it as 0).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import boxes as B
from .annotations import Annotations
from .labelspace import LabelSpace
from .predictions import Predictions, PredictionsError

log = logging.getLogger(__name__)

MIN_OVERLAP = 0.5
SETTINGS = ("default", "known_object")


def matlab_thresholds() -> np.ndarray:
    """float64 [11]: the values of MATLAB's ``0:0.1:1``.

    MATLAB's colon builds the first half as ``a + k*d`` and the second half as
    ``b - (n-k)*d``, so element 3 is 0.30000000000000004 (``0.3 ~= 0.1*3``) but elements
    6 and 7 are exactly the doubles nearest 0.6 and 0.7, unlike numpy's
    ``arange(0, 1.1, 0.1)`` and ``linspace(0, 1, 11)``, which give 0.6000000000000001 and
    0.7000000000000001. A class whose recall lands on 0.6 or 0.7 scores differently.
    """
    a, d, b, n = 0.0, 0.1, 1.0, 10
    return np.array([a + k * d if k < n / 2 else b - (n - k) * d for k in range(n + 1)])


THRESHOLDS = matlab_thresholds()


def overlap_pixel1(bb: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float64 [...]: IoU of ``pixel1`` boxes [..., 4], with the official arithmetic.

    Same operations in the same order as ``VOCevaldet_bboxpair.m`` so that values that
    land exactly on 0.5 compare the same way.
    """
    iw = np.minimum(bb[..., 2], gt[..., 2]) - np.maximum(bb[..., 0], gt[..., 0]) + 1
    ih = np.minimum(bb[..., 3], gt[..., 3]) - np.maximum(bb[..., 1], gt[..., 1]) + 1
    inter = iw * ih
    ua = ((bb[..., 2] - bb[..., 0] + 1) * (bb[..., 3] - bb[..., 1] + 1)
          + (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1) - inter)
    ok = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(ok, ua, 1.0), 0.0)


@dataclass
class EvalResult:
    """Per-class AP and recall of each setting; means over class subsets.

    ap[setting], recall[setting]: float64 [C]; npos: int64 [C].
    """

    labelspace: LabelSpace
    ap: dict
    recall: dict
    npos: np.ndarray
    num_images: int
    num_predictions: int
    extra: dict = field(default_factory=dict)

    def mean(self, setting: str, classes: np.ndarray | None = None) -> float:
        ap = self.ap[setting] if classes is None else self.ap[setting][classes]
        valid = ~np.isnan(ap)
        return float(ap[valid].mean()) if valid.any() else float("nan")

    def summary_json(self) -> str:
        """:meth:`summary` as strict JSON (an undefined mean, NaN, becomes null)."""
        def clean(x):
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return None if isinstance(x, float) and np.isnan(x) else x
        return json.dumps(clean(self.summary()), allow_nan=False)

    def summary(self) -> dict:
        """``{"default": {"full", "rare", "non_rare"}, "known_object": {...}, "zero_shot": ...}``, fractions."""
        rare = np.flatnonzero(self.labelspace.rare)
        non_rare = np.flatnonzero(~self.labelspace.rare)
        out = {s: {"full": self.mean(s), "rare": self.mean(s, rare), "non_rare": self.mean(s, non_rare)}
               for s in SETTINGS}
        zs = {}
        for s in SETTINGS:
            zs[s] = {}
            for name, split in self.labelspace.zero_shot_splits.items():
                unseen = np.array(split["unseen"], dtype=np.int64)
                seen = np.setdiff1d(np.arange(self.labelspace.num_classes), unseen)
                zs[s][name] = {"setting": split["setting"], "full": self.mean(s),
                               "seen": self.mean(s, seen), "unseen": self.mean(s, unseen)}
        if self.labelspace.zero_shot_splits:
            out["zero_shot"] = zs
        out["mean_recall"] = {s: float(np.nanmean(np.where(self.npos > 0, self.recall[s], np.nan)))
                              for s in SETTINGS}
        out["num_images"] = self.num_images
        out["num_predictions"] = self.num_predictions
        out.update(self.extra)
        return out

    def save_per_class(self, path) -> None:
        ls = self.labelspace
        rows = [{"hoi": c, "name": ls.class_name(c), "rare": bool(ls.rare[c]), "npos": int(self.npos[c]),
                 **{f"ap_{s}": _num(self.ap[s][c]) for s in SETTINGS},
                 **{f"recall_{s}": _num(self.recall[s][c]) for s in SETTINGS}}
                for c in range(ls.num_classes)]
        Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def _num(x: float):
    return None if np.isnan(x) else float(x)


def _ap_per_class(tp_sorted: np.ndarray, cls_sorted: np.ndarray, npos: np.ndarray):
    """AP and final recall per class from the TP flags of detections sorted by (class, -score).

    tp_sorted: float64 [P] (1 = true positive); cls_sorted: int64 [P], nondecreasing.
    Returns (ap, recall), float64 [C] each.
    """
    C = len(npos)
    ap, rec_end = np.zeros(C), np.zeros(C)
    bounds = np.searchsorted(cls_sorted, np.arange(C + 1))
    tp_cum_all = np.cumsum(tp_sorted)
    for c in range(C):
        s, e = bounds[c], bounds[c + 1]
        if npos[c] == 0:
            ap[c] = rec_end[c] = np.nan
            continue
        if e == s:
            continue  # no detections: AP 0 and recall 0, as the official code leaves them
        tp = tp_cum_all[s:e] - (tp_cum_all[s - 1] if s else 0.0)
        fp = np.arange(1, e - s + 1, dtype=np.float64) - tp
        rec = tp / npos[c]
        prec = tp / (fp + tp)
        best_after = np.maximum.accumulate(prec[::-1])[::-1]  # max precision at recall >= rec[k]
        first = np.searchsorted(rec, THRESHOLDS, side="left")  # rec is nondecreasing
        a = 0.0
        for k in first:
            p = best_after[k] if k < len(rec) else 0.0
            a = a + p / 11
        ap[c], rec_end[c] = a, rec[-1]
    return ap, rec_end


def _best_match(p_img, p_cls, p_h, p_o, g_img, g_cls, g_h, g_o, num_classes):
    """For each detection, the ground-truth pair of its image and class with the largest
    min(IoU_h, IoU_o) (first maximum in annotation order).

    Returns (best_ov float64 [P] (-inf without candidates), best_gt int64 [P] (-1)).
    """
    P = len(p_img)
    g_key = g_img * num_classes + g_cls
    g_order = np.argsort(g_key, kind="stable")  # keeps annotation order within (image, class)
    g_key_sorted = g_key[g_order]
    p_key = p_img * num_classes + p_cls
    lo = np.searchsorted(g_key_sorted, p_key, side="left")
    cnt = np.searchsorted(g_key_sorted, p_key, side="right") - lo
    best_ov = np.full(P, -np.inf)
    best_gt = np.full(P, -1, dtype=np.int64)
    total = int(cnt.sum())
    if total == 0:
        return best_ov, best_gt
    seg_start = np.cumsum(cnt) - cnt
    cand_p = np.repeat(np.arange(P), cnt)
    within = np.arange(total) - np.repeat(seg_start, cnt)
    cand_g = g_order[np.repeat(lo, cnt) + within]
    ov = np.minimum(overlap_pixel1(p_h[cand_p], g_h[cand_g]), overlap_pixel1(p_o[cand_p], g_o[cand_g]))
    has = cnt > 0
    seg_max = np.maximum.reduceat(ov, seg_start[has])
    is_max = ov == np.repeat(seg_max, cnt[has])
    pos = np.flatnonzero(is_max)
    first = np.r_[True, cand_p[pos[1:]] != cand_p[pos[:-1]]]
    winners = pos[first]
    best_ov[cand_p[winners]] = ov[winners]
    best_gt[cand_p[winners]] = cand_g[winners]
    return best_ov, best_gt


def evaluate(gt: Annotations, pred: Predictions, labelspace: LabelSpace, *,
             ignore_unknown_images: bool = False, source: str = "predictions") -> EvalResult:
    """HICO-DET mAP of ``pred`` against ``gt`` (Default and Known-Object)."""
    C = labelspace.num_classes
    pred.validate(C, source)
    p_img = pred.images_in(gt.file_names, ignore_unknown_images=ignore_unknown_images, source=source)
    unknown = p_img < 0
    keep = ~unknown
    p_img, p_cls, score = p_img[keep], pred.hoi[keep], pred.score[keep]
    p_h = B.convert(pred.boxes_h[keep], pred.box_format, "pixel1")
    p_o = B.convert(pred.boxes_o[keep], pred.box_format, "pixel1")
    row = np.arange(len(p_img))  # file order within an image

    g_img = gt.image_of_pair
    g_h = B.convert(gt.boxes_h, "coord", "pixel1")
    g_o = B.convert(gt.boxes_o, "coord", "pixel1")
    npos = np.bincount(gt.hoi, minlength=C)[:C]

    best_ov, best_gt = _best_match(p_img, p_cls, p_h, p_o, g_img, gt.hoi, g_h, g_o, C)
    # Official order: per class, descending score, ties by image then row (stable sort).
    order = np.lexsort((row, p_img, -score, p_cls))
    cls_sorted, img_sorted = p_cls[order], p_img[order]
    hit = best_ov[order] >= MIN_OVERLAP
    g_sorted = best_gt[order]
    tp = np.zeros(len(order))
    hits = np.flatnonzero(hit)
    _, first = np.unique(g_sorted[hits], return_index=True)  # the first hit of a pair matches it
    tp[hits[first]] = 1.0

    ap, rec = {}, {}
    ap["default"], rec["default"] = _ap_per_class(tp, cls_sorted, npos)
    has_object = np.zeros((len(gt), labelspace.num_objects), dtype=bool)
    has_object[g_img, gt.object] = True
    ko = has_object[img_sorted, labelspace.hoi_object[cls_sorted]]
    # Dropped detections lie in images without the object, so never matched: TP flags stand.
    ap["known_object"], rec["known_object"] = _ap_per_class(tp[ko], cls_sorted[ko], npos)
    missing = int((npos == 0).sum())
    if missing:
        log.warning("%d HOI class(es) have no ground-truth pair; left out of the means", missing)
    return EvalResult(labelspace, ap, rec, npos, len(gt), int(len(p_img)))


def evaluate_file(annotations, predictions, *, labelspace: str | LabelSpace = "hico_det",
                  box_format: str | None = None, ignore_unknown_images: bool = False) -> EvalResult:
    """Evaluate a predictions file against an annotation file (or ``'hico_det'``, the bundled test set).

    ``predictions`` may also be the official evaluation's detection files (a folder of
    ``detections_XX.mat`` or a ``detections.mat``; see :mod:`hoidata.matlab`)."""
    from . import matlab
    from .annotations import load_split
    from .predictions import read_predictions

    gt, ls = load_split(annotations, labelspace)
    if Path(predictions).is_dir() or Path(predictions).suffix == ".mat":  # the official detection files
        if box_format not in (None, "pixel0"):
            raise PredictionsError(f"{predictions}: the official detection files hold 0-based boxes by "
                                   f"definition; drop --box-format {box_format}")
        pred = matlab.read(predictions, gt.file_names, ls)
    else:
        pred = read_predictions(predictions, box_format)
    return evaluate(gt, pred, ls, ignore_unknown_images=ignore_unknown_images, source=str(predictions))


def format_table(res: EvalResult) -> str:
    """The results as a text table, mAP in percent like the papers print it."""
    s = res.summary()
    lines = [f"HICO-DET mAP ({res.labelspace.name}, {res.num_images} images, {res.num_predictions} predictions)",
             f"{'setting':<14}{'Full':>8}{'Rare':>8}{'Non-rare':>10}"]
    for setting in SETTINGS:
        r = s[setting]
        lines.append(f"{setting:<14}{100 * r['full']:8.2f}{100 * r['rare']:8.2f}{100 * r['non_rare']:10.2f}")
    if "zero_shot" in s:
        lines.append(f"\n{'zero-shot split':<22}{'Full':>8}{'Seen':>8}{'Unseen':>8}   (Default)")
        for name, r in s["zero_shot"]["default"].items():
            lines.append(f"{r['setting'] + ' (' + name + ')':<22}{100 * r['full']:8.2f}"
                         f"{100 * r['seen']:8.2f}{100 * r['unseen']:8.2f}")
    return "\n".join(lines)
