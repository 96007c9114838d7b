"""HOI classes asked for in words (``--hoi``, ``--classes``, ``--add-classes``) for the
commands that score with a student: ``hoi detect``, ``hoi predict``, ``hoi eval``.

The classes become a label space (:func:`hoidata.classes.query_labelspace`); their prompts
are embedded by the teacher's text tower, the teacher the cache or checkpoint names, loaded
as ``teacher-cache`` loads it (never downloaded) and checked by its weights' sha256. This
lives in ``hoi`` because it needs both the teacher (``pipeline``) and the student's caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ClassQuery:
    """HOI classes asked for in words (the options above); empty: the checkpoint's or the
    cache's own classes are scored."""

    hoi: tuple[str, ...] = ()         # 'VERB OBJECT [= PROMPT]' each
    classes_file: str | None = None   # one such line each, or a label-space JSON
    add_classes: bool = False         # beside the base's own classes, not instead of them

    def labelspace(self, base: LabelSpace) -> LabelSpace | None:
        """The label space of the classes asked for, or None when none is (the base's own)."""
        if not self.hoi and self.classes_file is None:
            if self.add_classes:
                raise InputError("--add-classes adds the classes of --hoi or --classes; give one of them")
            return None
        queries = list(self.hoi) + (read_classes_file(self.classes_file, base) if self.classes_file else [])
        ls = query_labelspace(base, queries, add=self.add_classes)
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


def cache_classes(cache_path, query: ClassQuery, labelspace=None):
    """(label space, text [C', D]) of the classes ``query`` asks for on a cache, or None (its
    own); ``labelspace``: the cache's, when given (a name or file)."""
    from cache.store import open_cache
    from trainer.cache_info import labelspace_of

    cache = open_cache(cache_path)
    ls = query.labelspace(labelspace_of(cache, labelspace))
    if ls is None:
        return None
    return ls, teacher_text(cache.teacher, ls.prompts)
