"""HOI classes asked for in words (``--hoi``, ``--classes``, ``--add-classes``) for the
commands that score with a student: ``hoi detect``, ``hoi predict``, ``hoi eval``.

The classes become a label space (:func:`hoidata.classes.query_labelspace`); their prompts
are embedded by the teacher's text tower, the teacher the cache or checkpoint names, loaded
as ``teacher-cache`` loads it (never downloaded) and checked by its weights' sha256. This
lives in ``hoi`` because it needs both the teacher (``pipeline``) and the student's caller.
"""

from __future__ import annotations

import logging

import click
import numpy as np

from hoicore.errors import InputError
from hoidata.classes import query_labelspace, read_classes_file
from hoidata.labelspace import LabelSpace

log = logging.getLogger(__name__)

CLASS_QUERY_OPTIONS = [
    click.option("--hoi", "hoi", multiple=True, metavar="'VERB OBJECT'",
                 help="Score this HOI class (repeatable), e.g. --hoi 'ride horse' --hoi 'feed horse'; the object "
                      "must be one the label space and its detector know. A new verb takes its -ing form in the "
                      "prompt, or the prompt written after '=' ('feed horse = a photo of a person feeding a horse')."),
    click.option("--classes", "classes_file", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="Score the classes of this file: one 'VERB OBJECT [= PROMPT]' a line, or a label-space JSON."),
    click.option("--add-classes", is_flag=True,
                 help="Score the classes asked for beside the checkpoint's own (default: instead of them)."),
]


def class_query_options(f):
    for opt in reversed(CLASS_QUERY_OPTIONS):
        f = opt(f)
    return f


def asked_labelspace(base: LabelSpace, hoi=(), classes_file=None, add_classes: bool = False) -> LabelSpace | None:
    """The label space of the classes asked for, or None when none is (the base's own classes)."""
    if not hoi and classes_file is None:
        if add_classes:
            raise InputError("--add-classes adds the classes of --hoi or --classes; give one of them")
        return None
    queries = list(hoi) + (read_classes_file(classes_file, base) if classes_file else [])
    ls = query_labelspace(base, queries, add=add_classes)
    for c in range(ls.num_classes) if ls.num_classes <= 50 else ():
        log.info("class %d: %s -> %r", c, ls.class_name(c), ls.prompts[c])
    return ls


def teacher_text(teacher, prompts, device="cpu") -> np.ndarray:
    """float32 [C, D]: ``prompts`` embedded by ``teacher`` (a cache's
    :class:`cache.schema.TeacherAttrs`), its templates averaged; refused if the weights found
    are not those its sha256 names."""
    from pipeline.teacher.clip import load_teacher, text_embeddings

    loaded = load_teacher(teacher.model, teacher.pretrained, device=device)
    if loaded.weights_sha256 != teacher.weights_sha256:
        raise InputError(f"{teacher.model}: its weights (sha256 {loaded.weights_sha256[:12]}...) are not the "
                         f"teacher's the student was trained with ({str(teacher.weights_sha256)[:12]}...)")
    return text_embeddings(loaded, prompts, tuple(teacher.templates), device=device)


def cache_classes(cache_path, hoi=(), classes_file=None, add_classes: bool = False, labelspace=None):
    """(label space, text [C', D]) of the classes asked for on a cache, or None (its own)."""
    from cache.store import open_cache
    from trainer.cache_info import labelspace_of

    cache = open_cache(cache_path)
    ls = asked_labelspace(labelspace_of(cache, labelspace), hoi, classes_file, add_classes)
    if ls is None:
        return None
    return ls, teacher_text(cache.teacher, ls.prompts)
