"""What a teacher cache means to the student: its label space, the classes training
may see, the crop rule its teacher cut with, which objects own which classes, and the
refusals (a test split, a cache without ground truth) that keep a number honest.
"""

from __future__ import annotations

import logging

import numpy as np

from cache import schema as S
from cache.store import TeacherCache
from hoicore.errors import InputError
from hoidata import boxes as B
from hoidata.labelspace import LabelSpace

from .config import ConfigError

log = logging.getLogger(__name__)


def labelspace_of(cache: TeacherCache, override: str | None = None) -> LabelSpace:
    """The label space of the cache: ``override`` (a built-in name or a file), else the
    cache's ``dataset.labelspace`` (a name, a file or the label-space dict itself); checked
    against the cache's classes."""
    src = override if override is not None else cache.dataset.labelspace
    if src is None:
        raise ConfigError(f"{cache.path} does not record its label space (dataset.labelspace); pass --labelspace "
                          "NAME|FILE")
    ls = LabelSpace.from_dict(src, source=f"{cache.path} dataset.labelspace") if isinstance(src, dict) \
        else LabelSpace.load(src)
    verb, obj = cache.read("text/verb"), cache.read("text/object")
    if ls.num_classes != len(verb):
        raise ConfigError(f"label space {ls.name!r} has {ls.num_classes} classes but {cache.path} has {len(verb)}")
    bad = np.flatnonzero((ls.hoi_verb != verb) | (ls.hoi_object != obj))
    if len(bad):
        c = int(bad[0])
        raise ConfigError(f"label space {ls.name!r} disagrees with {cache.path} on class {c}: (verb, object) "
                          f"{ls.hoi[c]} vs ({verb[c]}, {obj[c]})")
    return ls


def seen_classes(cache: TeacherCache, split: str) -> np.ndarray:
    """bool [C]: the classes training may see; all but the unseen ones of zero-shot ``split``
    of the cache's label space ('' for none: every class)."""
    num_classes = cache.layout.num_classes
    if not split:
        return np.ones(num_classes, dtype=bool)
    splits = labelspace_of(cache).zero_shot_splits
    if split not in splits:
        raise ConfigError(f"--unseen {split!r}: the label space of {cache.path} has no such zero-shot split "
                          f"(it has {', '.join(sorted(splits)) or 'none'})")
    seen = np.ones(num_classes, dtype=bool)
    seen[np.asarray(splits[split]["unseen"], dtype=np.int64)] = False
    return seen


def resolve_crop_mode(setting: str, cache: TeacherCache) -> str:
    """The teacher's crop mode: the setting, or for 'auto' the cache's ``teacher.crop_mode``."""
    return teacher_crop_mode(setting, cache.teacher, str(cache.path))


def teacher_crop_mode(setting: str, teacher: S.TeacherAttrs, where: str) -> str:
    """The crop mode a student pools with: ``setting``, or for 'auto' the one the teacher
    (recorded in ``where``) cut with."""
    mode = teacher.crop_mode
    if setting != "auto":
        if mode is not None and setting != mode:
            log.warning("--crop-mode %s differs from the crop rule the teacher cut with (%s, in %s): the union "
                        "branch pools other regions than its teacher saw", setting, mode, where)
        return setting
    if mode is None:
        log.warning("%s does not record teacher.crop_mode; assuming 'squash' (pass --crop-mode to say otherwise)",
                    where)
        return "squash"
    if mode not in B.CROP_MODES:
        raise InputError(f"{where}: teacher.crop_mode is {mode!r}; this version knows {', '.join(B.CROP_MODES)}")
    return mode


def refuse_test_split(cache: TeacherCache) -> None:
    """Refuse to train on a cache its dataset attributes call the test split: every number
    measured on it afterwards would be of a model that saw it."""
    if cache.dataset.split == "test":
        raise ConfigError(f"{cache.path} is a test split (its dataset.split): a student trained on it is measured "
                          "on what it saw; train on the train split's cache (hoi teacher-cache --split train)")


def require_ground_truth(cache: TeacherCache, why: str) -> None:
    """Refuse a cache without ground truth (built without annotations: ``gt/*`` empty), naming it and ``why``."""
    if cache.layout.num_gt == 0:
        raise ConfigError(f"{cache.path} holds no ground truth (it was built without --annotations), and {why} "
                          "needs it: rebuild it with `hoi teacher-cache ... --annotations FILE` (the CLIP arrays "
                          "come out the same), or train with --supervision clip")


def object_class_mask(cache: TeacherCache) -> np.ndarray:
    """bool [O, C]: True where class c is an HOI class of object o, for every object that the
    text classes or the detections name (an object without classes gets an all-False row)."""
    cls_obj = cache.read("text/object").astype(np.int64)
    labels = cache.read("detections/label")
    num_objects = int(max(cls_obj.max(initial=-1), labels.max(initial=-1))) + 1
    mask = np.zeros((num_objects, len(cls_obj)), dtype=bool)
    mask[cls_obj, np.arange(len(cls_obj))] = True
    return mask
