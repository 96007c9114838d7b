"""``hoi rescore``: score a new prompt set against a finished cache without running the
image encoder again.

The cache stores unit image and union embeddings; new scores are those embeddings
against the new text embeddings (so they differ from a full rerun only by the float16
rounding of the stored embeddings). The result is a new store, written as ``.wip`` and
renamed when complete, whose teacher attributes name the new prompts; only the levels the
source holds are rescored. One run at a time holds the output (``OUT.lock``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from cache import store as cstore
from hoicore.errors import InputError
from hoicore.lock import exclusive
from pipeline.teacher.clip import load_teacher, prompts_sha256, text_embeddings

log = logging.getLogger(__name__)

ROWS_PER_PASS = 1 << 16


def rescore(src, dst, *, prompts: list[str] | None = None, templates: tuple[str, ...] = ("{}",),
            device: str = "cpu") -> Path:
    """Copy the complete store ``src`` to ``dst`` with scores for ``prompts`` (default: the
    label space's) under ``templates``. Returns the final path of ``dst``."""
    dst = Path(dst).absolute()
    with exclusive(dst, what="rescore"):
        return _rescore(src, dst, prompts, templates, device)


def _rescore(src, dst: Path, prompts, templates, device) -> Path:
    cache = cstore.open_cache(src)
    teacher = cache.teacher
    prompts = list(prompts or _labelspace_prompts(cache))
    if len(prompts) != cache.layout.num_classes:
        raise InputError(f"{len(prompts)} prompts for {cache.layout.num_classes} HOI classes")
    t = load_teacher(teacher.model, teacher.pretrained, device=device)
    if t.weights_sha256 != teacher.weights_sha256:
        raise cstore.CacheError(f"{src} was made with weights {str(teacher.weights_sha256)[:12]}..., but "
                                f"{teacher.model} / {teacher.pretrained} loads {t.weights_sha256[:12]}... here")
    text = text_embeddings(t, prompts, templates, device=device)
    out = cstore.copy_store(cache, dst)
    teacher = dataclasses.replace(teacher, prompts=tuple(prompts), templates=tuple(templates),
                                  prompts_sha256=prompts_sha256(prompts, templates),
                                  extra={**teacher.extra, "rescored_from": str(cache.path)})
    out.replace_text(teacher.to_attrs(), text)
    text_t = torch.from_numpy(text)
    for level in out.levels:  # the levels the store holds (a global-only store has no union scores)
        score = out.array(f"{level}/score")
        for a in range(0, score.shape[0], ROWS_PER_PASS):  # one writer here: any row ranges are safe
            e = torch.from_numpy(out.read(f"{level}/embedding", slice(a, a + ROWS_PER_PASS)).astype(np.float32))
            score[a:a + ROWS_PER_PASS] = (e @ text_t.T).numpy().astype(np.float16)
    log.info("rescored %s with %d prompts x %d templates into %s", cache.path, len(prompts), len(templates), dst)
    return cstore.finalize(out)


def _labelspace_prompts(cache) -> list[str]:
    """The prompts of the label space the store records (a dict in every store this version writes)."""
    ls = cache.dataset.labelspace
    if not isinstance(ls, dict) or "prompts" not in ls:
        raise InputError(f"{cache.path} does not record its label space's prompts; pass --prompts FILE")
    return list(ls["prompts"])
