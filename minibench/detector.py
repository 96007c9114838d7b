"""A simulated COCO-style object detector: ground-truth boxes, degraded the way real ones are.

From the ground truth of a split (:class:`hoidata.annotations.Annotations`) it takes each
person and object once (a box in several pairs is one detection, not several), then:

- misses some (more often objects than people, more often small ones);
- jitters the corners (a fraction of the box size) and scores each detection lower the
  further it drifted;
- confuses some object labels with a look-alike (ball and frisbee, cup and bottle, ...);
- adds near-duplicates (what NMS leaves behind) and false positives.

The result is a :class:`hoidata.detections.Detections`, saved to HDF5 with
:func:`hoidata.detections.save_detections`. Every random draw comes from one generator
per image seeded by (seed, DETECTOR_STREAM, image index): the output is a pure function
of its inputs, and independent of the renderer's draws for the same image (which use
(seed, image index): sharing them made misses depend on the scene, e.g. on whether it was
drawn indoors).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hoicore import __version__
from hoidata import boxes as B
from hoidata import ragged
from hoidata.annotations import Annotations
from hoidata.detections import Detections
from hoidata.labelspace import LabelSpace

DETECTOR_STREAM = 0xDE7EC7  # tags the detector's random stream apart from the renderer's
VERSION = 2  # bumped when the same seed gives other detections (a built world records it)

# Look-alikes an imperfect detector mixes up (object names of minibench.labels).
CONFUSIONS = {"sports_ball": "frisbee", "frisbee": "sports_ball", "cup": "bottle", "bottle": "cup",
              "dog": "horse", "horse": "dog", "kite": "umbrella", "umbrella": "kite",
              "suitcase": "chair", "chair": "suitcase", "skateboard": "bicycle", "bicycle": "skateboard"}


@dataclass(frozen=True)
class DetectorConfig:
    """Error rates of the simulated detector (all recorded in the file's attrs)."""

    miss_human: float = 0.03
    miss_object: float = 0.07
    miss_small_extra: float = 0.10   # added for boxes under small_area px^2
    small_area: float = 24 * 24
    jitter: float = 0.04             # corner noise, std as a fraction of width / height
    confusion: float = 0.05          # P(an object gets its look-alike's label)
    duplicate: float = 0.05          # P(a near-duplicate survives NMS)
    false_positives: float = 0.8     # per image (Poisson mean)
    score_threshold: float = 0.05


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[k] IoU of coord boxes a [k, 4] and b [k, 4], row by row."""
    lt, rb = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    return inter / (B.area_coord(a) + B.area_coord(b) - inter)


def ground_truth_entities(ann: Annotations, i: int, human: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (box, label) of image ``i``: boxes float64 [k, 4] coord, labels int64 [k]."""
    p = ann.pairs_of(i)
    rows = np.concatenate([np.column_stack([p["boxes_h"], np.full(len(p["hoi"]), human)]),
                           np.column_stack([p["boxes_o"], p["object"]])])
    rows = np.unique(rows, axis=0)
    return rows[:, :4], rows[:, 4].astype(np.int64)


def _detect_image(boxes, labels, size, rng, cfg: DetectorConfig, human: int, confuse: np.ndarray, n_objects: int):
    w, h = size
    miss = np.where(labels == human, cfg.miss_human, cfg.miss_object)
    miss = miss + cfg.miss_small_extra * (B.area_coord(boxes) < cfg.small_area)
    keep = rng.random(len(labels)) >= miss
    gt, lab = boxes[keep], labels[keep].copy()
    wh = np.tile(gt[:, 2:] - gt[:, :2], 2)
    det = gt + rng.normal(0, cfg.jitter, gt.shape) * wh
    # Confident when the box is good: the score falls with the drift from the truth.
    score = rng.beta(5, 1.5, len(lab)) * (0.4 + 0.6 * _iou(det, gt) ** 2)
    swap = (lab != human) & (rng.random(len(lab)) < cfg.confusion)
    lab[swap] = confuse[lab[swap]]
    score[swap] *= 0.7
    dup = rng.random(len(lab)) < cfg.duplicate
    dup_boxes = gt[dup] + rng.normal(0, 2.5 * cfg.jitter, (int(dup.sum()), 4)) * wh[dup]
    n_fp = rng.poisson(cfg.false_positives)
    fp_wh = rng.uniform(12, 80, (n_fp, 2))
    fp_xy = rng.uniform(0, 1, (n_fp, 2)) * np.maximum([w, h] - fp_wh, 0)
    fp_lab = np.where(rng.random(n_fp) < 0.3, human, rng.integers(0, n_objects, n_fp))
    boxes = np.concatenate([det, dup_boxes, np.concatenate([fp_xy, fp_xy + fp_wh], 1)])
    scores = np.concatenate([score, score[dup] * rng.uniform(0.3, 0.7, int(dup.sum())),
                             rng.beta(1.5, 6, n_fp) * 0.8])
    labels = np.concatenate([lab, lab[dup], fp_lab]).astype(np.int64)
    boxes = B.clip_coord(boxes, w, h)
    ok = (B.area_coord(boxes) > 0) & (scores >= cfg.score_threshold)
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], labels[order]


def simulate(ann: Annotations, labelspace: LabelSpace, seed: int | list[int] = 0,
             cfg: DetectorConfig = DetectorConfig(), source: str = "") -> Detections:
    """Detections for every image of ``ann`` (empty images get false positives only).

    ``seed``: an int or a list of ints (e.g. [seed, split]); image i draws from
    [*seed, DETECTOR_STREAM, i]."""
    confuse = np.arange(labelspace.num_objects)
    for a, b in CONFUSIONS.items():
        if a in labelspace.objects and b in labelspace.objects:
            confuse[labelspace.objects.index(a)] = labelspace.objects.index(b)
    out_boxes, out_scores, out_labels, counts = [], [], [], []
    for i in range(len(ann)):
        rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), DETECTOR_STREAM, i])
        boxes, labels = ground_truth_entities(ann, i, labelspace.human)
        b, s, lab = _detect_image(boxes, labels, ann.sizes[i], rng, cfg, labelspace.human, confuse,
                                  labelspace.num_objects)
        out_boxes.append(b)
        out_scores.append(s)
        out_labels.append(lab)
        counts.append(len(s))
    attrs = {"detector": "minibench-simulated", "weights": "none (ground truth, degraded)",
             "score_threshold": cfg.score_threshold, "nms": "none (simulated)", "box_format": "coord",
             "labelspace": labelspace.name, "labelspace_fingerprint": labelspace.fingerprint,
             "source": source, "hoidata_version": __version__, "seed": seed, "simulation": asdict(cfg)}
    return Detections(ann.file_names, ann.sizes, ragged.offsets(counts),
                      np.concatenate(out_boxes).reshape(-1, 4), np.concatenate(out_scores),
                      np.concatenate(out_labels), attrs)
