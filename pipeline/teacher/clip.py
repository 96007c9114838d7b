"""The frozen CLIP teacher: loading it offline, its preprocessing, its text embeddings.

``model`` is any open_clip name (``ViT-B-16-quickgelu`` for OpenAI weights) or a
``local-dir:FOLDER`` with ``open_clip_config.json`` and weights; ``pretrained`` is a tag
(``openai``, needs the weights in the local cache since nothing is downloaded) or a
checkpoint file. Weights are identified by the sha256 of their tensors, whatever the
source, so two caches made with the same weights agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hoicore.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A loaded CLIP: the image encoder at the crop size, optionally a second one for the
    global pass at another input size (same weights, positional embedding interpolated)."""

    model: torch.nn.Module
    global_model: torch.nn.Module
    tokenizer: object
    image_size: int
    global_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    weights_sha256: str
    patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        g = self.global_size // self.patch_size
        return g, g


def register_model_configs(paths) -> None:
    """Register open_clip model configs (JSON files or folders); the model name is the file
    stem. Registering one twice is harmless."""
    if not paths:
        return
    import open_clip
    for p in paths:
        open_clip.add_model_config(p)


def _create(model: str, pretrained: str | None, image_size: int | None, device) -> torch.nn.Module:
    import open_clip

    missing = missing_teacher_files(model, pretrained)
    if missing:
        raise InputError(f"CLIP {model!r}: {missing} does not exist (moved or deleted?); point at where it is now")
    if ":" not in model and model not in open_clip.list_models():  # (local-dir:, hf-hub: name no config)
        raise InputError(f"{model!r} is not an open_clip model name (open_clip.list_models() lists them); for a "
                         "config of your own, pass its JSON with --model-config")
    try:
        m = open_clip.create_model(model, pretrained=pretrained or None, device=device,
                                   force_image_size=image_size, require_pretrained=bool(pretrained)
                                   or model.startswith("local-dir:"))
    except RuntimeError as e:
        raise InputError(f"cannot load CLIP {model!r} with weights {pretrained!r}: {e}. Nothing is downloaded "
                         "here: give a checkpoint file, a local-dir: folder, or weights already in the cache") from e
    return m.eval().requires_grad_(False)


def missing_teacher_files(model: str, pretrained: str | None) -> str | None:
    """The folder (of a ``local-dir:`` model) or weights file (a ``pretrained`` that is a path,
    not a tag such as 'openai') that is not on disk, or None."""
    if model.startswith("local-dir:") and not Path(model[len("local-dir:"):]).is_dir():
        return f"the folder {model[len('local-dir:'):]}"
    if pretrained and (os.sep in pretrained or Path(pretrained).suffix) and not Path(pretrained).is_file():
        return f"the weights file {pretrained}"
    return None


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names and bytes, in key order)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_teacher(model: str, pretrained: str | None = None, *, global_size: int | None = None,
                 mean=None, std=None, device="cpu") -> Teacher:
    """Load CLIP for the teacher. ``mean``/``std`` override what the weights declare."""
    import open_clip

    m = _create(model, pretrained, None, device)
    visual = m.visual
    if not hasattr(visual, "conv1") or not hasattr(visual, "proj"):
        raise InputError(f"{model}: the teacher needs a ViT image encoder (patch tokens for the dense map)")
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else int(visual.patch_size)
    gsize = global_size or size
    if gsize % patch:
        raise InputError(f"--global-size {gsize} is not a multiple of the patch size {patch}")
    gm = m if gsize == size else _create(model, pretrained, gsize, device)
    for enc in {id(m.visual): m.visual, id(gm.visual): gm.visual}.values():
        enc.output_tokens = True  # the forward pass then also returns the patch tokens
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    return Teacher(
        model=m, global_model=gm, tokenizer=open_clip.get_tokenizer(model), image_size=size,
        global_size=gsize, mean=tuple(mean or cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(std or cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation="roi_align-bilinear-area", resize_mode=str(cfg.get("resize_mode", "shortest")),
        weights_sha256=weights_sha256(m), patch_size=patch)


def prompts_sha256(prompts, templates) -> str:
    """Identity of a prompt set: the prompts and the templates applied to them."""
    return hashlib.sha256(json.dumps([list(prompts), list(templates)]).encode()).hexdigest()


def class_descriptions(prompts) -> list[str]:
    """'A photo of a person riding a bicycle' -> 'a person riding a bicycle' (for templates)."""
    out = []
    for p in prompts:
        low = p[0].lower() + p[1:]
        out.append(low[len("a photo of "):] if low.startswith("a photo of ") else low)
    return out


def text_embeddings(teacher: Teacher, prompts, templates=("{}",), device="cpu") -> np.ndarray:
    """float32 [C, D]: unit text embedding per class, averaged over templates then renormalised.

    The template ``"{}"`` means the prompt as written; other templates receive the prompt's
    description (``"a photo of {}."`` -> ``"a photo of a person riding a bicycle."``).
    """
    descs = class_descriptions(prompts)
    ctx = getattr(teacher.model, "context_length", None)
    acc = None
    for t in templates:
        texts = list(prompts) if t == "{}" else [t.format(d) for d in descs]
        tokens = teacher.tokenizer(texts).to(device)
        if ctx is not None:
            eot = (tokens != 0).sum(1)
            if int(eot.max()) >= ctx:  # the tokenizer truncates silently; say so
                log.warning("some prompts fill the %d-token context and were truncated", ctx)
        with torch.no_grad():
            e = teacher.model.encode_text(tokens).float()
        e = e / e.norm(dim=-1, keepdim=True)
        acc = e if acc is None else acc + e
    acc = acc / acc.norm(dim=-1, keepdim=True)
    return acc.cpu().numpy().astype(np.float32)
