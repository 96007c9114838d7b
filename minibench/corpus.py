"""The captioned "web" corpus on which the small CLIP learns this world, and its held-out sets.

CLIP learned from photos with alt text, so the corpus is made of photos with alt text:

- mostly **whole scenes** (``1 - P_CLOSE_UP``), shrunk to the CLIP's input (128 px), as
  photos posted with a caption show their subject: fewer and larger people than the HOI
  splits' scenes (``WEB_GROUPS_P``, ``WEB_PERSON_PX``: 1-4 interactions, people 80-170 px of
  the 224 px scene, 46-97 px at 128); captioned with the prompt of one of the scene's
  interactions, picked in proportion to its person's area (alt text names the salient
  thing, not every thing; an object lying unused behind someone is never named); with
  probability ``P_TWO`` (when the scene holds another, different interaction) the caption
  names two, joined by "and";
- a minority of **close-ups**: a square photo of one interaction framed as a photographer
  would (:func:`minibench.world.photo_crop`: the person and their objects fill 60-85% of the
  frame, context around them, never squashed), never cut with the teacher's union-box rule.

Every class is equally likely in web scenes (unlike the long-tailed train and test
splits): the teacher should know every class. Each scene gives one sample.

Rendered once, before training, into one ``.npz`` (rendering while training would take
the two cores from the model). Rendering runs in worker processes over fixed chunks of
scene indices and every scene has its own seed, so the bytes do not depend on the
number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
from PIL import Image

from hoicore.errors import InputError

from . import world
from .labels import NUM_CLASSES, PROMPTS

CLIP_INPUT = 128    # the CLIP's input size (minibench/model/minibench-vit.json)
WEB_SCENES = 50000
P_CLOSE_UP = 0.25   # close-ups among web samples
P_TWO = 0.3         # alt text naming two interactions, when the scene has two different ones
# Photos posted with alt text show their subject prominently: fewer and larger people than
# the HOI splits' scenes (1-4 interactions, people 80-170 of 224 px instead of 0-4 and 60-120).
WEB_GROUPS_P = (0.0, 0.45, 0.35, 0.15, 0.05)
WEB_PERSON_PX = (80.0, 170.0)
SPLIT_SEED = {"web": 1, "train": 2, "test": 3, "heldout": 4, "val": 5}  # one seed stream per split
KIND_CLOSE_UP, KIND_SCENE = 0, 1
_CHUNK = 250


def caption(first: int, second: int = -1) -> str:
    """The alt text naming HOI class ``first`` (and ``second`` when >= 0):
    'a photo of a person riding a horse and a person holding a kite'."""
    text = PROMPTS[first]
    if second >= 0:
        text += " and " + PROMPTS[second].removeprefix("a photo of ")
    return text


def _pool_map(fn, jobs: list, workers: int) -> list:
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may already run torch's thread pools.
        with mp.get_context("spawn").Pool(workers) as pool:
            return pool.map(fn, jobs)
    return [fn(j) for j in jobs]


def _main_pairs(pairs: list[dict]) -> list[dict]:
    """The first pair of each interaction group: its interaction (not an extra object lying behind)."""
    seen, out = set(), []
    for p in pairs:
        if p["group"] not in seen:
            seen.add(p["group"])
            out.append(p)
    return out


def _subject(pairs: list[dict], group: int) -> np.ndarray:
    """float64 [4]: the box around every person and object of one interaction group."""
    boxes = np.array([b for p in pairs if p["group"] == group for b in (p["box_h"], p["box_o"])])
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])


def _web_sample(rng, size: int) -> tuple[np.ndarray, tuple[int, int], int] | None:
    """One web sample: (uint8 [size, size, 3], caption classes (first, second or -1), kind),
    or None for a scene without people (nothing to caption)."""
    im, pairs = world.render(world.sample_scene(rng, world.UNIFORM, groups_p=WEB_GROUPS_P,
                                                person_px=WEB_PERSON_PX))
    if not pairs:
        return None
    main = _main_pairs(pairs)
    # alt text names the salient interaction: a group is picked in proportion to its person's area
    area = np.array([np.prod(p["box_h"][2:] - p["box_h"][:2]) for p in main], np.float64)
    named = main[int(rng.choice(len(main), p=area / area.sum()))]
    if rng.random() < P_CLOSE_UP:
        photo = world.photo_crop(im, _subject(pairs, named["group"]), rng, size)
        return np.asarray(photo), (named["hoi"], -1), KIND_CLOSE_UP
    others = sorted({p["hoi"] for p in main} - {named["hoi"]})
    second = int(rng.choice(others)) if others and rng.random() < P_TWO else -1
    return np.asarray(im.resize((size, size), Image.BILINEAR)), (named["hoi"], second), KIND_SCENE


def _render_chunk(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, split, start, stop, size = args
    images, captions, kind = [], [], []
    for i in range(start, stop):
        sample = _web_sample(np.random.default_rng([seed, SPLIT_SEED[split], i]), size)
        if sample is not None:
            images.append(sample[0])
            captions.append(sample[1])
            kind.append(sample[2])
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
            np.array(captions, np.int64).reshape(-1, 2), np.array(kind, np.uint8))


def render_corpus(n_scenes: int = WEB_SCENES, seed: int = 0, workers: int = 2, size: int = CLIP_INPUT) -> dict:
    """Render a corpus of ``n_scenes`` web scenes. Returns ``images`` uint8 [M, size, size, 3],
    ``caption`` int64 [M, 2] (HOI classes the alt text names, the second -1 when one:
    :func:`caption` gives the text), ``kind`` uint8 [M] (``KIND_CLOSE_UP`` or ``KIND_SCENE``)."""
    jobs = [(seed, "web", s, min(s + _CHUNK, n_scenes), size) for s in range(0, n_scenes, _CHUNK)]
    parts = _pool_map(_render_chunk, jobs, workers)
    return {"images": np.concatenate([p[0] for p in parts]), "caption": np.concatenate([p[1] for p in parts]),
            "kind": np.concatenate([p[2] for p in parts])}


def _render_heldout_chunk(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    seed, start, stop, size = args
    scenes, present, unions, hoi = [], [], [], []
    for i in range(start, stop):
        im, pairs = world.render(world.sample_scene(np.random.default_rng([seed, SPLIT_SEED["heldout"], i]),
                                                    world.UNIFORM))
        scenes.append(np.asarray(im))
        present.append(np.isin(np.arange(NUM_CLASSES), [p["hoi"] for p in pairs]))
        for p in pairs:
            unions.append(np.asarray(world.union_crop(im, p["box_h"], p["box_o"], size)))
            hoi.append(p["hoi"])
    return (np.stack(scenes), np.stack(present), np.stack(unions) if unions else np.zeros((0, size, size, 3), np.uint8),
            np.array(hoi, np.int64))


def render_heldout(n_scenes: int, seed: int = 0, workers: int = 2, size: int = CLIP_INPUT) -> dict:
    """Held-out scenes (drawn like web scenes, sharing none) to measure a CLIP on:
    ``scenes`` uint8 [n, 224, 224, 3] whole images with ``present`` bool [n, C] (the classes
    each shows), and every pair's union box cut as the teacher cuts it by default (squashed,
    no margin): ``unions`` uint8 [M, size, size, 3] of classes ``union_hoi`` int64 [M]."""
    jobs = [(seed, s, min(s + _CHUNK, n_scenes), size) for s in range(0, n_scenes, _CHUNK)]
    parts = _pool_map(_render_heldout_chunk, jobs, workers)
    keys = ("scenes", "present", "unions", "union_hoi")
    return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(keys)}


def save_corpus(corpus: dict, path: str | Path, seed: int) -> None:
    """Write ``corpus`` (see :func:`render_corpus`) with its prompts and seed; atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **corpus, prompts=np.array(PROMPTS), seed=np.int64(seed))
    tmp.replace(path)


def load_corpus(path: str | Path) -> dict:
    """Read a corpus written by :func:`save_corpus`; refuses one made for other prompts or
    by an older version of this module (another layout)."""
    with np.load(path) as z:
        if "caption" not in z.files:
            raise InputError(f"{path}: a web corpus of an older layout (no captions array); render it again "
                             f"(delete it, then rerun the command)")
        if tuple(z["prompts"].tolist()) != PROMPTS:
            raise InputError(f"{path}: corpus was rendered for another label space (prompts differ)")
        return {k: z[k] for k in ("images", "caption", "kind")}
