"""The captioned "web" corpus on which the small CLIP learns this world.

Each web scene (every class equally likely, unlike the long-tailed train and test
splits: the teacher should know every class) gives one close-up per interaction pair
(its union box, jittered as a detector's would be, squashed or squared) captioned with
that pair's prompt, and with probability ``p_scene`` the whole scene, captioned with the
prompt of one of its pairs, as alt text names one thing in a photo.

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

from . import world
from .labels import PROMPTS

CROP = 64
WEB_SCENES = 14000
SPLIT_SEED = {"web": 1, "train": 2, "test": 3, "heldout": 4}  # one seed stream per split
_CHUNK = 250


def _render_chunk(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, split, start, stop, p_scene, crop = args
    images, hoi, kind = [], [], []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, SPLIT_SEED[split], i])
        im, pairs = world.render(world.sample_scene(rng, world.UNIFORM))
        for p in pairs:
            images.append(np.asarray(world.union_crop(im, p["box_h"], p["box_o"], rng, crop)))
            hoi.append(p["hoi"])
            kind.append(0)
        if pairs and rng.random() < p_scene:
            images.append(np.asarray(im.resize((crop, crop), Image.BILINEAR)))
            hoi.append(pairs[int(rng.integers(len(pairs)))]["hoi"])
            kind.append(1)
    return (np.stack(images) if images else np.zeros((0, crop, crop, 3), np.uint8),
            np.array(hoi, np.int64), np.array(kind, np.uint8))


def render_corpus(n_scenes: int = WEB_SCENES, seed: int = 0, split: str = "web", p_scene: float = 0.5,
                  crop: int = CROP, workers: int = 2) -> dict:
    """Render a corpus. Returns ``images`` uint8 [M, crop, crop, 3], ``hoi`` int64 [M]
    (the caption is ``PROMPTS[hoi]``), ``kind`` uint8 [M] (0 union crop, 1 whole scene).

    ``split='heldout'`` draws scenes that no web sample shares (for evaluation)."""
    jobs = [(seed, split, s, min(s + _CHUNK, n_scenes), p_scene, crop) for s in range(0, n_scenes, _CHUNK)]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may already run torch's thread pools.
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return {"images": np.concatenate([p[0] for p in parts]), "hoi": np.concatenate([p[1] for p in parts]),
            "kind": np.concatenate([p[2] for p in parts])}


def save_corpus(corpus: dict, path: str | Path, seed: int) -> None:
    """Write ``corpus`` (see :func:`render_corpus`) with its prompts and seed; atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **corpus, prompts=np.array(PROMPTS), seed=np.int64(seed))
    tmp.replace(path)


def load_corpus(path: str | Path) -> dict:
    """Read a corpus written by :func:`save_corpus`; refuses one made for other prompts."""
    with np.load(path) as z:
        if tuple(z["prompts"].tolist()) != PROMPTS:
            raise ValueError(f"{path}: corpus was rendered for another label space (prompts differ)")
        return {k: z[k] for k in ("images", "hoi", "kind")}
