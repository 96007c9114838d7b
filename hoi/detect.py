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
import torch
from tqdm import tqdm

from cache.schema import DatasetAttrs, LayoutAttrs, TeacherAttrs
from hoi.queries import ClassQuery
from hoicore import __version__
from hoicore.device import resolve_device
from hoicore.errors import InputError
from hoidata import ragged
from hoidata.classes import class_record
from hoidata.drawing import Drawing
from hoidata.labelspace import LabelSpace
from hoidata.pairs import PairRule, make_pairs
from hoidata.predictions import Predictions, write_predictions
from minibench.clip import MODEL_DIR
from minibench.labels import NAME as MINIBENCH
from pipeline.detection.detector import LoadedDetector, load_detector
from pipeline.detection.options import DetectOptions
from pipeline.detection.stage import (
    DetectStageError,
    concat_detections,
    decoded_batches,
    detect_images,
    list_images,
    resolve_precision,
)
from pipeline.images import Decoded
from pipeline.teacher.clip import missing_teacher_files
from pipeline.teacher.global_pass import GlobalPass
from pipeline.teacher.options import TeacherOptions
from trainer import checkpoint as ckpt
from trainer.cache_info import teacher_crop_mode
from trainer.config import Scoring
from trainer.geometry import pair_block
from trainer.model import Student
from trainer.predict import block_rows, concat_rows, student_from, student_scores

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


def default_detector(labelspace: LabelSpace) -> tuple[str, Path] | None:
    """(model, weights) of the detector shipped for a label space: the bundled benchmark's."""
    folder = MODEL_DIR / "detector"
    if labelspace.name == MINIBENCH and folder.is_dir():
        return "tiny-fcos", folder
    return None


@dataclass(frozen=True)
class Trained:
    """What a checkpoint says it was trained on (its JSON, read and typed): the teacher, the
    cache's layout, the label space and the pair rule. Reading it loads no model."""

    checkpoint: Path
    meta: dict
    teacher: TeacherAttrs
    layout: LayoutAttrs
    labelspace: LabelSpace
    pair_rule: PairRule

    @classmethod
    def read(cls, checkpoint) -> "Trained":
        meta = ckpt.read_meta(checkpoint)
        on = meta["cache"]  # the attributes of the cache it was trained on
        dataset = DatasetAttrs.from_attrs(on["dataset"], f"{checkpoint}: cache.dataset")
        return cls(Path(checkpoint), meta, TeacherAttrs.from_attrs(on["teacher"], f"{checkpoint}: cache.teacher"),
                   LayoutAttrs.from_attrs(on["layout"], f"{checkpoint}: cache.layout"),
                   LabelSpace.from_dict(dataset.labelspace, source=f"{checkpoint}: cache.dataset.labelspace"),
                   PairRule(**on["pair_rule"]))

    def teacher_options(self, model: str | None = None, weights=None) -> TeacherOptions:
        """The teacher it was trained with, loaded from ``model`` / ``weights`` when given (the
        same CLIP moved elsewhere: its weights' sha256 is checked after loading)."""
        t = self.teacher
        return TeacherOptions(model=model or t.model, pretrained=str(weights) if weights else t.pretrained,
                              templates=t.templates, crop_mode=t.crop_mode or "squash",
                              union_margin=float(t.union_margin), global_size=t.global_size, mean=t.mean,
                              std=t.std)


def run_detect(images, checkpoint, output, *, detector: str | None = None, detector_weights=None,
               images_list=None, draw=None, drawing=None, options: DetectOptions | None = None,
               scoring: Scoring = Scoring(), classes: ClassQuery = ClassQuery(), teacher_model: str | None = None,
               teacher_weights=None) -> dict:
    """HOI detections of every image in ``images`` (or ``images_list``) by the student of
    ``checkpoint``, written to ``output`` (.json, .json.gz or .npz) with their provenance;
    pictures of the top detections in ``draw`` when given, as ``drawing`` says
    (:class:`hoidata.drawing.Drawing`: images, pairs per image, size).
    ``options``: how the detector runs (:class:`pipeline.detection.options.DetectOptions`; its
    device and on_error serve every stage, its batch size is the images per batch through
    the detector, CLIP and the student). ``scoring``: how pair rows are scored. ``classes``:
    classes asked for in words (:mod:`hoi.queries`), scored instead of (or beside) the
    checkpoint's own and recorded in the output. teacher_model, teacher_weights: where the
    checkpoint's CLIP is now, when it has moved (an open_clip name or ``local-dir:FOLDER``,
    and a weights file); refused unless its weights are those the student was trained with.
    Returns the provenance, with images/s per stage."""
    opts = options or DetectOptions()
    trained = Trained.read(checkpoint)
    if detector is None:
        found = default_detector(trained.labelspace)
        if found is None:
            raise InputError(f"no detector is shipped for label space {trained.labelspace.name!r}: pass --detector "
                             "NAME (a torchvision detection model) and --detector-weights FILE")
        detector, detector_weights = found
    root = Path(images)
    names, expected = list_images(root, images_list, trained.labelspace)  # before any model loads
    pipe = DetectPipeline(trained, load_detector(detector, detector_weights, trained.labelspace), opts, scoring,
                          classes, teacher_model, teacher_weights)
    batches = decoded_batches([root / n for n in names], expected, opts.batch_size, opts.workers, pipe.max_side)
    parts = []
    with tqdm(total=len(names), unit="img", desc="hoi detect", disable=not opts.progress, dynamic_ncols=True) as bar:
        t_decode = time.perf_counter()
        for positions, decoded in batches:
            pipe.seconds.detector += time.perf_counter() - t_decode  # waiting for decoded images
            parts.append(pipe([names[i] for i in positions], positions, decoded))
            bar.update(len(positions))
            t_decode = time.perf_counter()

    skipped = pipe.seconds.skipped
    if names and len(skipped) == len(names):
        raise InputError(f"none of the {len(names)} images under {root} could be read (e.g. {skipped[0]}); "
                         f"nothing was written to {output}")
    pred = Predictions.from_arrays(names, box_format="coord", **concat_rows(parts))
    pred.labelspace = trained.labelspace.to_dict()  # the checkpoint's: readers need not be told it
    if pipe.asked is not None:
        pred.classes = class_record(pipe.asked, pipe.clip.text)
    provenance = pipe.provenance(root, len(pred))
    write_predictions(pred, output, provenance=provenance)
    if draw:
        from hoidata.visualize import draw_images  # PIL and the fonts: only when drawing

        draw_images(pred, pipe.scored, lambda name: root / name, draw, drawing or Drawing())
    log.info("%s: %d predictions on %d images (%s images/s)", output, len(pred), len(names),
             provenance["images_per_s"]["total"])
    return provenance


class DetectPipeline:
    """What ``hoi detect`` runs on each batch of decoded images, built once: the detector, CLIP's
    global pass over the classes scored, the student, the pair rule it was trained with, and
    the run's settings. Called per batch; :meth:`provenance` says what made the rows."""

    def __init__(self, trained: Trained, det: LoadedDetector, options: DetectOptions, scoring: Scoring,
                 classes: ClassQuery, teacher_model: str | None = None, teacher_weights=None):
        self.trained, self.det, self.options, self.scoring = trained, det, options, scoring
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        det.model.to(self.device)
        self.asked = classes.labelspace(trained.labelspace)
        self.scored = self.asked or trained.labelspace  # their prompts go through the teacher's text tower
        self.teacher_opts = trained.teacher_options(teacher_model, teacher_weights)
        self.clip = self._global_pass()
        self.student: Student = student_from(trained.checkpoint, trained.meta, self.clip.text, self.device)
        self.crop_mode = teacher_crop_mode(self.student.config.crop_mode, trained.teacher, "the checkpoint's teacher")
        self.mask = self.scored.object_class_mask                       # bool [O, C]
        self.mask_t = torch.from_numpy(self.mask).to(self.device)
        self.seconds = StageSeconds()
        # each image decoded at most as large as the detector and CLIP read it: memory follows the inputs
        self.max_side = max(det.input_side, self.clip.teacher.global_size) if det.input_side else None

    def _global_pass(self) -> GlobalPass:
        """The checkpoint's CLIP over the classes scored; refused unless found and its weights
        are those the student was trained with."""
        t, where = self.teacher_opts, self.trained.checkpoint
        missing = missing_teacher_files(t.model, t.pretrained)
        if missing:
            raise InputError(f"the teacher of {where} ({t.model}): {missing} does not exist (moved?); pass "
                             "--teacher-model local-dir:FOLDER or an open_clip name, and --teacher-weights FILE if "
                             "its weights are elsewhere (checked by sha256 against the checkpoint's)")
        clip = GlobalPass(t, self.scored.prompts, self.device)
        if clip.teacher.weights_sha256 != self.trained.teacher.weights_sha256:
            raise ckpt.CheckpointError(f"{t.model}: its weights are not those the student of {where} was trained "
                                       "with (their sha256 differs); give the teacher it was trained with")
        return clip

    def __call__(self, names: list[str], positions, decoded: list[Decoded | str]) -> dict[str, np.ndarray]:
        """Prediction rows of one batch: images ``names`` (at ``positions`` of the run's list),
        ``decoded`` their pixels or the message of a failure. Detect, pair, encode, score;
        boxes in the files' own pixels."""
        t0 = time.perf_counter()
        ok, arrays = [], []
        for i, name, got in zip(positions, names, decoded):
            if isinstance(got, str):
                if self.options.on_error != "skip":
                    raise DetectStageError(f"{got} (pass --on-error skip to record it as skipped and go on)")
                log.warning("skipping %s", got)
                self.seconds.skipped.append(name)
                continue
            ok.append(i)
            arrays.append(got)
        found = concat_detections(detect_images(self.det, arrays, self.options, self.device, self.precision))
        box, score, label = found.boxes, found.scores, found.labels  # boxes in the files' pixels
        human, obj, pair_offsets = make_pairs(score, label, ragged.offsets(found.counts),
                                              self.trained.labelspace.human, self.trained.pair_rule)
        t1 = time.perf_counter()
        _, _, dense = self.clip([d.pixels for d in arrays])
        t2 = time.perf_counter()
        sizes = np.array([d.size for d in arrays], np.float32).reshape(-1, 2)
        block = pair_block(np.array(ok, np.int64), sizes, det_box=box, det_score=score, det_label=label,
                           human=human, obj=obj, pair_offsets=pair_offsets, grid=self.trained.layout.grid,
                           crop_mode=self.crop_mode, union_margin=self.trained.teacher.union_margin, dense=dense)
        scores = student_scores(self.student, block, self.mask_t, self.device, max(len(ok), 1),
                                self.student.config.amp, self.scoring.union_weight)
        rows = block_rows(block, scores, self.mask, self.scoring.det_exponent, self.scoring.top_k)
        s = self.seconds
        s.detector, s.clip, s.student = s.detector + t1 - t0, s.clip + t2 - t1, s.student + time.perf_counter() - t2
        s.images, s.pairs = s.images + len(ok), s.pairs + len(human)
        return rows

    def provenance(self, root: Path, num_predictions: int) -> dict:
        """What made the rows: each stage's settings and weights, the counts and the rates."""
        det, s, meta = self.det, self.seconds, self.trained.meta
        return {
            "tool": "hoi detect", "package_version": __version__, "images": str(root.absolute()),
            "detector": {"name": det.name, "weights": str(Path(det.weights).absolute()),
                         "weights_sha256": det.weights_sha256,
                         **{k: v for k, v in asdict(self.options).items()
                            if k not in ("overwrite", "progress", "chunk_size")},
                         "precision": self.precision, "own_settings": det.own_settings},
            "teacher": {**asdict(self.teacher_opts), "weights_sha256": self.clip.teacher.weights_sha256,
                        "global_size": self.clip.teacher.global_size, "levels": ["global"]},
            "student": {"checkpoint": str(self.trained.checkpoint.absolute()), "epoch": meta["epoch"],
                        "config": meta["config"], "train_cache": meta["cache"]["path"]},
            "pair_rule": self.trained.pair_rule.as_dict(), **asdict(self.scoring),
            "num_images": s.images + len(s.skipped), "skipped_images": s.skipped, "num_pairs": s.pairs,
            "num_predictions": num_predictions,
            "seconds": {k: round(getattr(s, k), 3) for k in ("detector", "clip", "student")},
            "images_per_s": s.images_per_s(),
            "decoded_max_side": self.max_side,  # larger images were reduced to this long side as decoded
        }
