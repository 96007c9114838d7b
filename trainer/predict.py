"""Predictions for a cached split, and their HICO-DET evaluation from the cache alone.

Three scorers of the same pairs (the cache's, from the detections by the pair rule):

- ``student``: a trained checkpoint; each pair branch's softmax over the classes of the
  pair's object, averaged over the branches (late fusion; early fusion has one branch).
- ``teacher``: CLIP on the union boxes alone, the baseline every student is compared with:
  softmax(union raw cosine / temperature) over the classes of the pair's object. Softmax
  rather than the raw cosine because raw cosines carry a per-crop offset (one crop is
  closer to every prompt than another) that would mix up the ranking across pairs; the
  temperature is the one the student's soft labels use, so both are on one scale.
- ``dense``: CLIP's dense map (the global pass) RoI-pooled over each union box, scored like
  the teacher (softmax of cosine / temperature over the object's classes): what a
  ``--residual`` student scores before any training, and a teacher that needs no union crop.
- ``random``: uniform random class scores: chance for the interaction classifier on the
  same detections and pairs.

Every scorer's class scores are multiplied by (human score x object score) ** det_exponent
and kept only for the HOI classes of the detected object. Boxes are written in the
``coord`` convention, as the cache stores them.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from cache.store import TeacherCache, open_cache
from hoicore.device import resolve_device
from hoicore.files import write_json_atomic
from hoidata.annotations import Annotations
from hoidata.classes import class_record, to_base_classes
from hoidata.evaluation import EvalResult, evaluate
from hoidata.hico_mat import read_image_labels
from hoidata.predictions import Predictions, write_predictions

from . import checkpoint as ckpt
from .batch import Block
from .cache_info import labelspace_of, object_class_mask, resolve_crop_mode
from .config import PREDICTION_MODELS as MODELS
from .config import ConfigError, TrainConfig
from .engine import autocast_for
from .loader import CacheReader, prefetched
from .model import Student, clip_regions, masked_softmax, pair_scores, state_shapes

log = logging.getLogger(__name__)


def ground_truth(cache: TeacherCache, labelspace_name: str = "") -> Annotations:
    """The cache's ground truth (gt/*, images/*) as evaluator annotations (coord boxes)."""
    if cache.layout.num_gt == 0:
        raise ConfigError(f"{cache.path} holds no ground truth (gt/* is empty: a training split?); evaluate on "
                          "a cache of a test split")
    return Annotations(
        file_names=[str(n) for n in cache.read("images/file_name")],
        sizes=cache.read("images/size").astype(np.int64), offsets=cache.read("gt/offsets").astype(np.int64),
        boxes_h=cache.read("gt/box_h").astype(np.float64), boxes_o=cache.read("gt/box_o").astype(np.float64),
        hoi=cache.read("gt/hoi").astype(np.int64), verb=cache.read("gt/verb").astype(np.int64),
        object=cache.read("gt/object").astype(np.int64), labelspace_name=labelspace_name)


def load_student(checkpoint, cache: TeacherCache, device: torch.device,
                 text: np.ndarray | None = None) -> tuple[Student, dict]:
    """The trained student of checkpoint folder ``checkpoint`` scoring ``cache``'s text
    embeddings, or ``text`` float32 [C', D] when given (refused if the cache was made by
    another teacher); returns (model, meta)."""
    meta = ckpt.read_meta(checkpoint)
    ckpt.check_teacher(meta, cache, checkpoint)
    return student_from(checkpoint, meta, cache.read("text/embedding") if text is None else text, device), meta


def _query_mask(ls, cache: TeacherCache) -> np.ndarray:
    """bool [O, C']: the object-class mask of the classes of label space ``ls``, over the
    objects of the cache (whose detections name them by ``ls``'s object indices)."""
    num_objects = max(ls.num_objects, int(cache.read("detections/label").max(initial=-1)) + 1)
    mask = np.zeros((num_objects, ls.num_classes), dtype=bool)
    mask[:ls.num_objects] = ls.object_class_mask
    return mask


def student_from(checkpoint, meta: dict, text: np.ndarray, device: torch.device) -> Student:
    """The student of a checkpoint (``meta``: its JSON, read and checked) over text embeddings
    float32 [C, D] of its teacher, in eval mode. Its weights' shapes are checked from the
    file's header before the model is built."""
    config = TrainConfig.from_dict(meta["config"])
    text_t = torch.from_numpy(np.asarray(text, np.float32))
    ckpt.check_shapes(checkpoint, state_shapes(config, tuple(text_t.shape)))
    model = Student(config, text_t).to(device)
    model.load_state_dict(ckpt.load_weights(checkpoint))
    return model.eval()


def _rows(block: Block, scores: np.ndarray, class_mask: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """Prediction rows of a block: (pair, class) for every class of each pair's object, with
    scores [P, C]; only the ``top_k`` best of each image when top_k > 0 (then best first)."""
    pair, cls = np.nonzero(class_mask[block.object])
    score = scores[pair, cls].astype(np.float64)
    image = block.image[block.pair_image[pair]]
    if top_k > 0:
        order = np.lexsort((-score, image))  # stable: by image, best first, ties in row order
        rank = np.arange(len(order)) - np.searchsorted(image[order], image[order])
        keep = order[rank < top_k]
        pair, cls, score, image = pair[keep], cls[keep], score[keep], image[keep]
    return {"image": image, "boxes_h": block.boxes[pair, 0], "boxes_o": block.boxes[pair, 1], "hoi": cls,
            "score": score}


def block_rows(block: Block, scores: np.ndarray, class_mask: np.ndarray, det_exponent: float = 1.0,
               top_k: int = 0) -> dict[str, np.ndarray]:
    """Prediction rows of a block from class scores float [P, C]: times (human score x object
    score) ** det_exponent, on the classes of each pair's object (class_mask bool [O, C])."""
    return _rows(block, scores * (block.det_score.prod(1) ** det_exponent)[:, None], class_mask, top_k)


def concat_rows(parts: list[dict]) -> dict[str, np.ndarray]:
    """The rows of several blocks, one array per field (empty arrays when there are none)."""
    return {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros((0, 4) if k.startswith("boxes") else 0)
            for k in ("image", "boxes_h", "boxes_o", "hoi", "score")}


def scores_by_batch(block: Block, score, class_mask: torch.Tensor, device: torch.device,
                    batch_size: int) -> np.ndarray:
    """float32 [P, C]: ``score(batch)`` (a [p, C] tensor) of a block's images, ``batch_size`` at a time."""
    out = [np.zeros((0, class_mask.shape[1]), np.float32)]
    for s in range(0, len(block), batch_size):
        batch = block.select(np.arange(s, min(s + batch_size, len(block)))).to_batch(class_mask, device)
        with torch.no_grad():
            out.append(score(batch).float().cpu().numpy())
    return np.concatenate(out)


def student_scores(model: Student, block: Block, class_mask: torch.Tensor, device: torch.device,
                   batch_size: int, amp: bool, union_weight: float) -> np.ndarray:
    """float32 [P, C]: the student's fused pair scores for a block, batch by batch."""
    def score(batch):
        with autocast_for(device, amp):
            outputs = model(batch)
        return pair_scores(outputs, batch.class_mask, union_weight, model.none_logits())
    return scores_by_batch(block, score, class_mask, device, batch_size)


def predict(cache_path, model: str = "student", checkpoint=None, *, det_exponent: float = 1.0, top_k: int = 0,
            temperature: float | None = None, batch_size: int = 64, block_images: int = 256, device: str = "auto",
            seed: int = 0, union_weight: float = 0.5, classes=None) -> tuple[Predictions, dict]:
    """Predictions of ``model`` (student / teacher / random, see the module docstring) for
    every pair of the cache, and a dict saying what made them.

    checkpoint: the student's checkpoint folder (student only). temperature: the teacher's
    softmax temperature (default: the training default, 0.01). seed: the random baseline's.
    union_weight: the union branch's share of a late-fusion student's pair scores.
    classes: (label space, text embeddings float32 [C', D] of its prompts by the cache's
    teacher): the classes a student scores instead of the cache's (classes asked for in
    words, :mod:`hoidata.classes`); the predictions record them.
    """
    if not 0 <= union_weight <= 1:
        raise ConfigError(f"union_weight must be in [0, 1], not {union_weight}")
    if model not in MODELS:
        raise ConfigError(f"model {model!r}: choose one of {', '.join(MODELS)}")
    if (model == "student") != (checkpoint is not None):
        raise ConfigError("--checkpoint goes with --scorer student (and only with it)")
    if classes is not None and model != "student":
        raise ConfigError(f"classes asked for in words (--hoi, --classes) are scored by a student; the {model} "
                          "baseline scores the cache's own classes")
    cache = open_cache(cache_path)
    dev = resolve_device(device)
    mask = object_class_mask(cache) if classes is None else _query_mask(classes[0], cache)
    info = {"model": model, "cache": {"path": str(cache.path), "fingerprint": cache.fingerprint},
            "det_exponent": det_exponent, "top_k": top_k}
    if model == "student":
        student, meta = load_student(checkpoint, cache, dev, None if classes is None else classes[1])
        config = student.config
        reader = CacheReader(cache, resolve_crop_mode(config.crop_mode, cache), ("dense",))
        mask_t = torch.from_numpy(mask).to(dev)
        info.update(checkpoint=str(checkpoint), epoch=meta["epoch"], config=config.to_dict(),
                    train_cache=meta["cache"]["path"], union_weight=union_weight)

        def score_block(b: Block) -> np.ndarray:
            return student_scores(student, b, mask_t, dev, batch_size, config.amp, union_weight)
    elif model == "teacher":
        cache.require_level("union", why="the teacher baseline scores union crops")
        temperature = TrainConfig().temperature if temperature is None else temperature
        info["temperature"] = temperature
        reader = CacheReader(cache, "squash", ("union_score",))  # the teacher needs no grid geometry

        def score_block(b: Block) -> np.ndarray:
            raw = torch.from_numpy(b.union_score.astype(np.float32))
            return masked_softmax(raw / temperature, torch.from_numpy(mask[b.object])).numpy()
    elif model == "dense":
        temperature = TrainConfig().temperature if temperature is None else temperature
        info["temperature"] = temperature
        roi_size = TrainConfig().roi_size
        reader = CacheReader(cache, resolve_crop_mode("auto", cache), ("dense",))
        text = torch.nn.functional.normalize(torch.from_numpy(cache.read("text/embedding").astype(np.float32)), dim=-1)
        mask_t = torch.from_numpy(mask)

        def score_block(b: Block) -> np.ndarray:
            return scores_by_batch(b, lambda batch: masked_softmax(
                clip_regions(batch, roi_size)["pair"] @ text.T / temperature, batch.class_mask),
                mask_t, torch.device("cpu"), batch_size)
    else:
        info["seed"] = seed
        reader = CacheReader(cache, "squash", ())
        rng = np.random.default_rng(seed)

        def score_block(b: Block) -> np.ndarray:
            return rng.random((b.num_pairs, mask.shape[1]))
    skipped = int((~reader.ok).sum())
    if skipped:
        log.warning("%d image(s) of %s were skipped by the teacher (no dense map): no predictions there",
                    skipped, cache.path)

    parts = [block_rows(block, score_block(block), mask, det_exponent, top_k)  # the next block read meanwhile
             for block in prefetched(lambda r: reader.read(*r), reader.blocks(block_images), 1)]
    pred = Predictions.from_arrays([str(n) for n in cache.read("images/file_name")], box_format="coord",
                                   **concat_rows(parts))
    if cache.dataset.labelspace is not None:  # so readers know what the classes are
        pred.labelspace = labelspace_of(cache).to_dict()
    if classes is not None:
        pred.classes = info["classes"] = class_record(*classes)
    info["num_predictions"] = len(pred)
    return pred, info


def predict_file(cache_path, output, **predict_kw) -> dict:
    """:func:`predict`, written to ``output`` (.json, .json.gz or .npz); returns what made them."""
    pred, info = predict(cache_path, **predict_kw)
    write_predictions(pred, output, provenance=info)
    return {**info, "output": str(output)}


def run_eval(cache_path, *, results=None, predictions=None, labelspace: str | None = None, image_labels=None,
             classes=None, **predict_kw) -> tuple[EvalResult, dict]:
    """Predict (see :func:`predict`) on a test cache and evaluate against its own ground
    truth and label space; write the results JSON (the evaluator's summary under
    ``results`` plus what made the predictions) to ``results`` and the predictions to
    ``predictions`` when given. ``image_labels``: HICO-DET's ``anno.mat``, whose image-level
    labels then decide the Known-Object images as the official code does (default: the
    images holding a ground-truth pair of the object, a stand-in; results say which)."""
    cache = open_cache(cache_path)
    ls = labelspace_of(cache, labelspace)
    gt = ground_truth(cache, ls.name)  # before predicting: a cache without ground truth fails fast
    if classes is not None:  # and classes the label space lacks cannot be evaluated
        to_base_classes(class_record(*classes), ls, "the classes asked for")
    labels = read_image_labels(image_labels, gt.file_names, ls) if image_labels else None
    pred, info = predict(cache_path, classes=classes, **predict_kw)
    res = evaluate(gt, pred, ls, source=f"predictions for {cache.path}", image_labels=labels)
    report = {**info, "results": json.loads(res.summary_json())}
    if predictions:
        write_predictions(pred, predictions)
    if results:
        write_json_atomic(results, report)
    return res, report
