"""``hoi detect``: from a folder of photos and a trained student to HOI detections.

The student's cheap inference path, streamed in batches of images so memory stays flat
for any number of them::

    decode -> detector (pipeline.detection.stage) -> pairs (the student's pair rule)
           -> CLIP's global pass (pipeline.teacher.global_pass) -> student (trainer.predict) -> rows

No union crop is encoded: that is the teacher's cost, which the student exists to avoid.
The teacher, its prompts, the pair rule and the label space are the ones the checkpoint
was trained with (its JSON records them); the detector is given, or for the bundled
benchmark's label space the shipped one. Each stage's settings go into the output's
``provenance``. The rows equal those of ``hoi teacher-cache --levels global`` on the same
detections followed by ``hoi predict`` (tests/test_detect.py).

This module is where detector, teacher and student meet, so it lives in ``hoi`` (the only
package that imports both ``pipeline`` and ``trainer``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cache.schema import DatasetAttrs, LayoutAttrs, TeacherAttrs
from hoicore.errors import InputError
from hoidata import ragged

log = logging.getLogger(__name__)


@dataclass
class StageSeconds:
    """Wall seconds spent in each stage of ``hoi detect`` (decoding counted with the detector)."""

    detector: float = 0.0
    clip: float = 0.0
    student: float = 0.0
    images: int = 0
    pairs: int = 0
    skipped: list = field(default_factory=list)

    def images_per_s(self) -> dict[str, float]:
        total = self.detector + self.clip + self.student
        rate = lambda s: round(self.images / s, 2) if s else 0.0  # noqa: E731
        return {"total": rate(total), "detector": rate(self.detector), "clip": rate(self.clip),
                "student": rate(self.student)}


def default_detector(labelspace) -> tuple[str, Path] | None:
    """(model, weights) of the detector shipped for a label space: the bundled benchmark's."""
    from minibench.clip import MODEL_DIR
    from minibench.labels import NAME

    folder = MODEL_DIR / "detector"
    if labelspace.name == NAME and folder.is_dir():
        return "tiny-fcos", folder
    return None


def _teacher_options(teacher, model: str | None = None, weights=None):
    """The teacher recorded in a checkpoint (:class:`cache.schema.TeacherAttrs`), loaded from
    ``model`` / ``weights`` when given (the same CLIP moved elsewhere: its weights' sha256 is
    checked after loading)."""
    from pipeline.teacher.options import TeacherOptions

    return TeacherOptions(model=model or teacher.model, pretrained=str(weights) if weights else teacher.pretrained,
                          templates=teacher.templates, crop_mode=teacher.crop_mode or "squash",
                          union_margin=float(teacher.union_margin), global_size=teacher.global_size,
                          mean=teacher.mean, std=teacher.std)


def run_detect(images, checkpoint, output, *, detector: str | None = None, detector_weights=None,
               images_list=None, draw=None, drawing=None, options=None, batch_size: int = 32,
               union_weight: float = 0.5, det_exponent: float = 1.0, top_k: int = 0, hoi=(), classes_file=None,
               add_classes: bool = False, teacher_model: str | None = None, teacher_weights=None) -> dict:
    """HOI detections of every image in ``images`` (or ``images_list``) by the student of
    ``checkpoint``, written to ``output`` (.json, .json.gz or .npz) with their provenance;
    pictures of the top detections in ``draw`` when given, as ``drawing`` says
    (:class:`hoidata.visualize.Drawing`: images, pairs per image, size).
    ``options``: the detector's :class:`pipeline.detection.options.DetectOptions` (its device and
    on_error serve every stage). hoi, classes_file, add_classes: classes asked for in words
    (:mod:`hoi.queries`), scored instead of (or beside) the checkpoint's own and recorded in
    the output. teacher_model, teacher_weights: where the checkpoint's CLIP is now, when it
    has moved (an open_clip name or ``local-dir:FOLDER``, and a weights file); refused
    unless its weights are those the student was trained with. Returns the provenance, with
    images/s per stage."""
    from tqdm import tqdm

    from hoi.queries import asked_labelspace
    from hoicore.device import resolve_device
    from hoidata.classes import class_record
    from hoidata.labelspace import LabelSpace
    from hoidata.pairs import PairRule
    from hoidata.predictions import Predictions, write_predictions
    from pipeline.detection.detector import load_detector
    from pipeline.detection.options import DetectOptions
    from pipeline.detection.stage import decoded_batches, list_images, resolve_precision
    from pipeline.teacher.clip import missing_teacher_files
    from pipeline.teacher.global_pass import GlobalPass
    from trainer import checkpoint as ckpt
    from trainer.predict import concat_rows, student_from

    opts = options or DetectOptions()
    meta = ckpt.read_meta(checkpoint)
    trained_on = meta["cache"]  # the attributes of the cache it was trained on
    teacher = TeacherAttrs.from_attrs(trained_on["teacher"], f"{checkpoint}: cache.teacher")
    dataset = DatasetAttrs.from_attrs(trained_on["dataset"], f"{checkpoint}: cache.dataset")
    layout = LayoutAttrs.from_attrs(trained_on["layout"], f"{checkpoint}: cache.layout")
    ls = LabelSpace.from_dict(dataset.labelspace, source=f"{checkpoint}: cache.dataset.labelspace")
    if detector is None:
        found = default_detector(ls)
        if found is None:
            raise InputError(f"no detector is shipped for label space {ls.name!r}: pass --detector NAME (a "
                             "torchvision detection model) and --detector-weights FILE")
        detector, detector_weights = found
    device = resolve_device(opts.device)
    precision = resolve_precision(opts.precision, device)
    root = Path(images)
    names, expected = list_images(root, images_list, ls)
    det = load_detector(detector, detector_weights, ls)
    det.model.to(device)
    asked = asked_labelspace(ls, hoi, classes_file, add_classes)
    scored = asked or ls  # the classes scored: their prompts go through the teacher's text tower
    teacher_opts = _teacher_options(teacher, teacher_model, teacher_weights)
    missing = missing_teacher_files(teacher_opts.model, teacher_opts.pretrained)
    if missing:
        raise InputError(f"the teacher of {checkpoint} ({teacher_opts.model}): {missing} does not exist (moved?); "
                         "pass --teacher-model local-dir:FOLDER or an open_clip name, and --teacher-weights FILE "
                         "if its weights are elsewhere (checked by sha256 against the checkpoint's)")
    clip = GlobalPass(teacher_opts, scored.prompts, device)
    if clip.teacher.weights_sha256 != teacher.weights_sha256:
        raise ckpt.CheckpointError(f"{teacher_opts.model}: its weights are not those the student of {checkpoint} "
                                   "was trained with (their sha256 differs); give the teacher it was trained with")
    student = student_from(checkpoint, meta, clip.text, device)
    scorer = _Scorer(student, scored, teacher, layout.grid, device, union_weight,
                     det_exponent, top_k)
    rule = PairRule(**trained_on["pair_rule"])

    seconds, parts = StageSeconds(), []
    # each image decoded at most as large as the detector and CLIP read it: memory follows the batch's inputs
    max_side = max(det.input_side, clip.teacher.global_size) if det.input_side else None
    batches = decoded_batches([root / n for n in names], expected, batch_size, opts.workers, max_side)
    with tqdm(total=len(names), unit="img", desc="hoi detect", disable=not opts.progress, dynamic_ncols=True) as bar:
        t_decode = time.perf_counter()
        for positions, decoded in batches:
            seconds.detector += time.perf_counter() - t_decode  # waiting for decoded images
            parts.append(_detect_batch(det, clip, scorer, rule, ls, names, positions, decoded, opts, device,
                                       precision, seconds))
            bar.update(len(positions))
            t_decode = time.perf_counter()

    if names and len(seconds.skipped) == len(names):
        raise InputError(f"none of the {len(names)} images under {root} could be read (e.g. {seconds.skipped[0]}); "
                         f"nothing was written to {output}")
    pred = Predictions.from_arrays(names, box_format="coord", **concat_rows(parts))
    pred.labelspace = ls.to_dict()  # the checkpoint's: readers need not be told it
    if asked is not None:
        pred.classes = class_record(asked, clip.text)
    provenance = _provenance(det, opts, precision, teacher_opts, clip, checkpoint, meta, rule, seconds,
                             union_weight, det_exponent, top_k, root, len(pred))
    provenance["decoded_max_side"] = max_side  # larger images were reduced to this long side as decoded
    write_predictions(pred, output, provenance=provenance)
    if draw:
        from hoidata.visualize import Drawing, draw_images

        draw_images(pred, scored, lambda name: root / name, draw, drawing or Drawing())
    log.info("%s: %d predictions on %d images (%s images/s)", output, len(pred), len(names),
             provenance["images_per_s"]["total"])
    return provenance


@dataclass
class _Scorer:
    """The student and what it needs to turn a batch's detections into prediction rows."""

    student: object
    labelspace: object
    teacher: TeacherAttrs  # the teacher the student was trained with (the checkpoint's record)
    grid: tuple            # its dense map's (H, W)
    device: object
    union_weight: float
    det_exponent: float
    top_k: int

    def __post_init__(self):
        import torch

        from trainer.cache_info import teacher_crop_mode

        self.crop_mode = teacher_crop_mode(self.student.config.crop_mode, self.teacher, "the checkpoint's teacher")
        self.mask = self.labelspace.object_class_mask
        self.mask_t = torch.from_numpy(self.mask).to(self.device)

    def rows(self, image: np.ndarray, sizes: np.ndarray, dense: np.ndarray, dets: tuple, pairs: tuple) -> dict:
        from trainer.geometry import pair_block
        from trainer.predict import block_rows, student_scores

        box, score, label = dets
        human, obj, offsets = pairs
        block = pair_block(image, sizes.astype(np.float32), det_box=box, det_score=score, det_label=label,
                           human=human, obj=obj, pair_offsets=offsets, grid=self.grid, crop_mode=self.crop_mode,
                           union_margin=self.teacher.union_margin, dense=dense)
        scores = student_scores(self.student, block, self.mask_t, self.device, 64, self.student.config.amp,
                                self.union_weight)
        return block_rows(block, scores, self.mask, self.det_exponent, self.top_k)


def _detect_batch(det, clip, scorer: _Scorer, rule, ls, names, positions, decoded, opts, device, precision,
                  seconds: StageSeconds) -> dict:
    """Prediction rows of one batch of images (``positions`` into ``names``, ``decoded`` their
    :class:`pipeline.images.Decoded` pixels or the message of a failure): detect, pair,
    encode, score; boxes in the files' own pixels."""
    from hoidata.pairs import make_pairs
    from pipeline.detection.stage import DetectStageError, concat_detections, detect_images

    t0 = time.perf_counter()
    ok, arrays = [], []
    for i, got in zip(positions, decoded):
        if isinstance(got, str):
            if opts.on_error != "skip":
                raise DetectStageError(f"{got} (pass --on-error skip to record it as skipped and go on)")
            log.warning("skipping %s", got)
            seconds.skipped.append(names[i])
            continue
        ok.append(i)
        arrays.append(got)
    found = concat_detections(detect_images(det, arrays, opts, device, precision))  # boxes in the files' pixels
    offsets = ragged.offsets(found.counts)
    box, score, label = found.boxes, found.scores, found.labels
    human, obj, pair_offsets = make_pairs(score, label, offsets, ls.human, rule)
    t1 = time.perf_counter()
    _, _, dense = clip([d.pixels for d in arrays])
    t2 = time.perf_counter()
    sizes = np.array([d.size for d in arrays]).reshape(-1, 2)
    rows = scorer.rows(np.array(ok, np.int64), sizes, dense, (box, score, label), (human, obj, pair_offsets))
    seconds.detector += t1 - t0
    seconds.clip += t2 - t1
    seconds.student += time.perf_counter() - t2
    seconds.images += len(ok)
    seconds.pairs += len(human)
    return rows


def _provenance(det, opts, precision, teacher_opts, clip, checkpoint, meta, rule, seconds: StageSeconds,
                union_weight, det_exponent, top_k, root: Path, num_predictions: int) -> dict:
    from hoicore import __version__

    return {
        "tool": "hoi detect", "package_version": __version__, "images": str(root.absolute()),
        "detector": {"name": det.name, "weights": str(Path(det.weights).absolute()),
                     "weights_sha256": det.weights_sha256, **{k: v for k, v in asdict(opts).items()
                                                              if k not in ("overwrite", "progress", "chunk_size")},
                     "precision": precision, "own_settings": det.own_settings},
        "teacher": {**asdict(teacher_opts), "weights_sha256": clip.teacher.weights_sha256,
                    "global_size": clip.teacher.global_size, "levels": ["global"]},
        "student": {"checkpoint": str(Path(checkpoint).absolute()), "epoch": meta["epoch"],
                    "config": meta["config"], "train_cache": meta["cache"]["path"]},
        "pair_rule": rule.as_dict(), "union_weight": union_weight, "det_exponent": det_exponent, "top_k": top_k,
        "num_images": seconds.images + len(seconds.skipped), "skipped_images": seconds.skipped,
        "num_pairs": seconds.pairs, "num_predictions": num_predictions,
        "seconds": {k: round(getattr(seconds, k), 3) for k in ("detector", "clip", "student")},
        "images_per_s": seconds.images_per_s(),
    }
