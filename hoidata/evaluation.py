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
- Known-Object keeps, for a class of object o, only detections in the Known-Object
  images of o: those whose image-level labels (``anno.mat``, see
  :func:`hoidata.hico_mat.read_image_labels`) are 1 for any HOI class of o, when they are
  given (``image_labels``); otherwise a stand-in, the images holding a visible
  ground-truth pair of o. The two differ where ``anno.mat`` marks an HOI of o positive
  in an image whose pairs of o are all invisible. Every result says which was used
  (``known_object_images``).

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

from hoicore.files import write_json_atomic

from . import boxes as B
from . import ragged
from .annotations import AnnotationError, Annotations
from .classes import asked_classes, to_base_classes
from .labelspace import LabelSpace
from .predictions import Predictions, PredictionsError

log = logging.getLogger(__name__)

MIN_OVERLAP = 0.5
SETTINGS = ("default", "known_object")
KO_IMAGE_LABELS = "anno.mat image labels"
KO_STAND_IN = "ground-truth pairs (stand-in)"


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

    ap[setting], recall[setting]: float64 [C]; npos: int64 [C]; known_object_images: which
    Known-Object image sets were used (``KO_IMAGE_LABELS`` or ``KO_STAND_IN``).
    """

    labelspace: LabelSpace
    ap: dict
    recall: dict
    npos: np.ndarray
    num_images: int
    num_predictions: int
    extra: dict = field(default_factory=dict)
    known_object_images: str = KO_STAND_IN

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
        out["known_object_images"] = self.known_object_images
        out.update(self.extra)
        return out

    def save_per_class(self, path) -> None:
        ls = self.labelspace
        rows = [{"hoi": c, "name": ls.class_name(c), "rare": bool(ls.rare[c]), "npos": int(self.npos[c]),
                 **{f"ap_{s}": _num(self.ap[s][c]) for s in SETTINGS},
                 **{f"recall_{s}": _num(self.recall[s][c]) for s in SETTINGS}}
                for c in range(ls.num_classes)]
        write_json_atomic(path, rows)


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
    cand_p = ragged.owners(cnt)
    cand_g = g_order[ragged.ranges(lo, cnt)]
    ov = np.minimum(overlap_pixel1(p_h[cand_p], g_h[cand_g]), overlap_pixel1(p_o[cand_p], g_o[cand_g]))
    has = cnt > 0
    seg_max = np.maximum.reduceat(ov, (np.cumsum(cnt) - cnt)[has])
    is_max = ov == np.repeat(seg_max, cnt[has])
    pos = np.flatnonzero(is_max)
    first = np.r_[True, cand_p[pos[1:]] != cand_p[pos[:-1]]]
    winners = pos[first]
    best_ov[cand_p[winners]] = ov[winners]
    best_gt[cand_p[winners]] = cand_g[winners]
    return best_ov, best_gt


def known_object_table(gt: Annotations, labelspace: LabelSpace, image_labels: np.ndarray | None = None) -> np.ndarray:
    """bool [N, O]: the images (rows, ``gt`` order) whose detections of object o's classes
    Known-Object keeps. Without ``image_labels``: the stand-in, images holding a pair of o.
    With them (bool [N, O], e.g. from :func:`hoidata.hico_mat.read_image_labels`): those,
    once checked as ``eval_one.m`` asserts: every image holding a pair of o is among them."""
    has_pair = np.zeros((len(gt), labelspace.num_objects), dtype=bool)
    has_pair[gt.image_of_pair, gt.object] = True
    if image_labels is None:
        return has_pair
    labels = np.asarray(image_labels)
    if labels.dtype != bool or labels.shape != has_pair.shape:
        raise AnnotationError(f"image labels are {labels.dtype} {labels.shape}; expected bool [{len(gt)} images, "
                              f"{labelspace.num_objects} objects] (see hoidata.hico_mat.read_image_labels)")
    bad = np.argwhere(has_pair & ~labels)
    if len(bad):
        i, o = bad[0]
        raise AnnotationError(f"image {gt.file_names[i]} holds a ground-truth pair of {labelspace.objects[o]!r}, but "
                              f"its image labels mark no HOI class of it positive ({len(bad)} such image-object "
                              "pair(s)); eval_one.m stops here: use image labels of the same split")
    return labels


def evaluate(gt: Annotations, pred: Predictions, labelspace: LabelSpace, *,
             ignore_unknown_images: bool = False, source: str = "predictions",
             image_labels: np.ndarray | None = None) -> EvalResult:
    """HICO-DET mAP of ``pred`` against ``gt`` (Default and Known-Object).

    ``image_labels``: bool [N, O] Known-Object images (see :func:`known_object_table`);
    ``None`` uses the stand-in. The result says which (``known_object_images``)."""
    known = known_object_table(gt, labelspace, image_labels)
    C = labelspace.num_classes
    pred, scored = _in_labelspace(pred, labelspace, source)
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
    ko = known[img_sorted, labelspace.hoi_object[cls_sorted]]
    # Dropped detections lie in images without a pair of their class (known_object_table
    # checks this for image labels), so never matched: TP flags stand.
    ap["known_object"], rec["known_object"] = _ap_per_class(tp[ko], cls_sorted[ko], npos)
    missing = int((npos == 0).sum())
    if missing:
        log.warning("%d HOI class(es) have no ground-truth pair; left out of the means", missing)
    result = EvalResult(labelspace, ap, rec, npos, len(gt), int(len(p_img)),
                        known_object_images=KO_STAND_IN if image_labels is None else KO_IMAGE_LABELS)
    if scored is not None:
        result.extra["scored_classes"] = {"classes": scored.tolist(),
                                          **{s: result.mean(s, scored) for s in SETTINGS}}
    return result


def _in_labelspace(pred: Predictions, labelspace: LabelSpace, source: str) -> tuple[Predictions, np.ndarray | None]:
    """(pred with its classes those of ``labelspace``, the classes it scored when they are not
    all of them in order, else None): a file that records its own classes (``pred.classes``,
    e.g. classes asked for in words) has them matched by name, a class the label space lacks
    refused."""
    if pred.classes is None:
        return pred, None
    index = to_base_classes(pred.classes, labelspace, source)
    if len(pred) and (pred.hoi.min() < 0 or pred.hoi.max() >= len(index)):
        k = int(np.flatnonzero((pred.hoi < 0) | (pred.hoi >= len(index)))[0])
        raise PredictionsError(f"{source}: image {pred.file_names[pred.image[k]]}: HOI class {pred.hoi[k]} is not "
                               f"one of the {len(index)} classes the file records")
    mapped = Predictions(pred.file_names, pred.image, pred.boxes_h, pred.boxes_o, index[pred.hoi], pred.score,
                         pred.box_format)
    asked = asked_classes(pred.classes, index)
    if asked is not None:
        return mapped, asked
    same = np.array_equal(index, np.arange(labelspace.num_classes))
    return mapped, None if same else np.unique(index)


def evaluate_file(annotations, predictions, *, labelspace: str | LabelSpace | None = None,
                  box_format: str | None = None, ignore_unknown_images: bool = False,
                  split: str = "test", image_labels="auto") -> EvalResult:
    """Evaluate a predictions file against an annotation file (or ``'hico_det'``, the bundled test set).

    ``predictions`` may also be the official evaluation's detection files (a folder of
    ``detections_XX.mat`` or a ``detections.mat``; see :mod:`hoidata.matlab`).
    ``image_labels``: an ``anno.mat`` for the Known-Object images; ``'auto'``: the
    ``anno.mat`` beside an ``anno_bbox.mat`` given as ``annotations``, if any; ``None``:
    the stand-in. ``split`` is the split of both ``.mat`` files. ``labelspace``: the
    annotations' (a name, file or :class:`LabelSpace`); None: the one the predictions file
    records, else HICO-DET's (a file recording another than the one given is refused).
    """
    from . import matlab
    from .ground_truth import load_split
    from .predictions import labelspace_of, read_predictions

    official = Path(predictions).is_dir() or Path(predictions).suffix == ".mat"  # the official detection files
    if official:
        if box_format not in (None, "pixel0"):
            raise PredictionsError(f"{predictions}: the official detection files hold 0-based boxes by "
                                   f"definition; drop --box-format {box_format}")
        labelspace = labelspace or "hico_det"
    else:
        pred = read_predictions(predictions, box_format)
        labelspace = labelspace_of(pred, labelspace, str(predictions))
    gt, ls = load_split(annotations, labelspace, split)
    labels = image_labels_for(annotations, image_labels, gt.file_names, ls, split)
    if official:
        pred = matlab.read(predictions, gt.file_names, ls)
    return evaluate(gt, pred, ls, ignore_unknown_images=ignore_unknown_images, source=str(predictions),
                    image_labels=labels)


def image_labels_for(annotations, image_labels, file_names: list[str], labelspace: LabelSpace,
                     split: str = "test") -> np.ndarray | None:
    """bool [N, O] Known-Object images for ``file_names``, or None for the stand-in.

    ``image_labels``: a path to an ``anno.mat``; ``'auto'``: the one beside ``annotations``
    when that is an ``anno_bbox.mat`` (see :func:`hoidata.hico_mat.find_image_labels`);
    ``None``: none."""
    from .hico_mat import find_image_labels, read_image_labels

    path = find_image_labels(annotations) if isinstance(image_labels, str) and image_labels == "auto" \
        else image_labels
    if path is None:
        return None
    log.info("Known-Object images from %s (split %s)", path, split)
    return read_image_labels(path, file_names, labelspace, split)


def format_table(res: EvalResult) -> str:
    """The results as a text table, mAP in percent like the papers print it."""
    s = res.summary()
    lines = [f"HICO-DET mAP ({res.labelspace.name}, {res.num_images} images, {res.num_predictions} predictions)",
             f"{'setting':<14}{'Full':>8}{'Rare':>8}{'Non-rare':>10}"]
    for setting in SETTINGS:
        r = s[setting]
        lines.append(f"{setting:<14}{100 * r['full']:8.2f}{100 * r['rare']:8.2f}{100 * r['non_rare']:10.2f}")
    lines.append(f"Known-Object images: {res.known_object_images}")
    if "scored_classes" in s:
        sc = s["scored_classes"]
        lines.append(f"classes asked for ({len(sc['classes'])}): Default {100 * sc['default']:.2f}, "
                     f"Known-Object {100 * sc['known_object']:.2f}")
    if "zero_shot" in s:
        lines.append(f"\n{'zero-shot split':<22}{'Full':>8}{'Seen':>8}{'Unseen':>8}   (Default)")
        for name, r in s["zero_shot"]["default"].items():
            lines.append(f"{r['setting'] + ' (' + name + ')':<22}{100 * r['full']:8.2f}"
                         f"{100 * r['seen']:8.2f}{100 * r['unseen']:8.2f}")
    return "\n".join(lines)
