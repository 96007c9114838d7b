"""Scenes: several interactions placed on a background, rendered with PIL; union crops.

A scene is a square image (224 px by default) with 0-4 interactions (:mod:`minibench.
interactions`), people 60-120 px tall so that a 14x14 or 16x16 token map of the whole
image still gives a person several tokens (the DESIGN's warning about the dense map).
Groups may overlap a little (intersection over union up to 0.3): partial occlusion,
drawn back to front by where they stand.

Everything is a pure function of a ``numpy.random.Generator``: the same seed gives the
same pixels and boxes. Boxes are in the ``coord`` convention (continuous xyxy, see
:mod:`hoidata.boxes`), rounded outward to whole pixels (so they are also integral in
HICO-DET's ``pixel1`` frame) and always inside the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from . import figures as F
from .interactions import Group, group
from .labels import HOI, NUM_CLASSES, class_weights

SCENE_SIZE = 224
PERSON_PX = (60.0, 120.0)
SUPERSAMPLE = 2          # draw at 2x and downsample: anti-aliased edges at little cost
MAX_GROUP_IOU = 0.3
GROUPS_P = (0.02, 0.25, 0.40, 0.23, 0.10)  # P(0, 1, 2, 3, 4 interactions); 0 = an empty image

_SKIES = ((0.55, 0.75, 0.95), (0.75, 0.85, 0.95), (0.85, 0.75, 0.65), (0.65, 0.68, 0.72))
_GROUNDS = ((0.35, 0.60, 0.25), (0.55, 0.55, 0.55), (0.85, 0.78, 0.55), (0.45, 0.35, 0.25), (0.30, 0.45, 0.30))
_WALLS = ((0.90, 0.88, 0.80), (0.75, 0.82, 0.85), (0.88, 0.80, 0.80), (0.70, 0.70, 0.66))
_FLOORS = ((0.60, 0.45, 0.30), (0.50, 0.50, 0.52), (0.75, 0.70, 0.62))


@dataclass
class Placed:
    """A group in the image: person height ``scale`` px, mirrored or not, feet at (cx, gy)."""

    group: Group
    scale: float
    flip: bool
    cx: float
    gy: float

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """float64 [k, 2] local units -> image pixels (continuous, y down)."""
        s = -1.0 if self.flip else 1.0
        return np.stack([self.cx + s * pts[:, 0] * self.scale, self.gy - pts[:, 1] * self.scale], 1)

    def box(self, ent=None) -> np.ndarray:
        """float64 [4] coord box of entity ``ent`` (all of the group when None), unrounded."""
        x0, y0, x1, y1 = self.group.extent(ent)
        xs = self.to_px(np.array([[x0, y0], [x1, y1]]))
        return np.array([xs[:, 0].min(), xs[:, 1].min(), xs[:, 0].max(), xs[:, 1].max()])


@dataclass
class Scene:
    """What to draw: background seed and horizon, and the placed groups (back to front)."""

    size: int
    horizon: float
    indoor: bool
    bg_seed: int
    groups: list = field(default_factory=list)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _place(g: Group, rng, size: int, horizon: float, taken: list,
           person_px: tuple[float, float] = PERSON_PX) -> Placed | None:
    """Scale and position ``g`` inside the image (the person ``person_px`` tall when it fits),
    overlapping earlier groups only a little."""
    x0, y0, x1, y1 = g.extent()
    hi = min(person_px[1], 0.94 * size / (y1 - y0), 0.94 * size / (x1 - x0))
    lo = min(person_px[0], hi)
    for _ in range(12):
        scale, flip = float(rng.uniform(lo, hi)), bool(rng.random() < 0.5)
        left, right = (-x1, -x0) if flip else (x0, x1)
        cx = float(rng.uniform(2 - left * scale, size - 2 - right * scale))
        g_lo, g_hi = 2 + y1 * scale, size - 2 + y0 * scale  # keep top and bottom inside
        g_lo_ground = max(g_lo, horizon + 0.05 * scale)      # feet below the horizon when possible
        gy = float(rng.uniform(g_lo_ground, g_hi) if g_lo_ground < g_hi else rng.uniform(g_lo, g_hi))
        p = Placed(g, scale, flip, cx, gy)
        box = p.box()
        if all(_iou(box, q.box()) <= MAX_GROUP_IOU for q in taken):
            return p
    return None


def tier_sampler(weights: np.ndarray) -> Callable:
    """A class sampler: rng -> HOI class drawn with probability proportional to ``weights`` [C]."""
    p = np.asarray(weights, np.float64) / np.sum(weights)
    return lambda rng: int(rng.choice(NUM_CLASSES, p=p))


LONG_TAIL = tier_sampler(class_weights())      # train and test splits
UNIFORM = tier_sampler(np.ones(NUM_CLASSES))   # the web corpus: every class equally often


def sample_scene(rng, sampler: Callable = LONG_TAIL, size: int = SCENE_SIZE, first_class: int | None = None,
                 p_extra: float = 0.15, groups_p: tuple = GROUPS_P,
                 person_px: tuple[float, float] = PERSON_PX) -> Scene:
    """A random scene. ``first_class`` forces the first interaction (always placed: the
    image is still empty), which is how a split guarantees every class appears.
    ``groups_p``: P(0, 1, ... interactions); ``person_px``: range of people's heights."""
    n = int(rng.choice(len(groups_p), p=groups_p))
    if first_class is not None:
        n = max(n, 1)
    scene = Scene(size, horizon=float(rng.uniform(0.3, 0.6) * size), indoor=bool(rng.random() < 0.3),
                  bg_seed=int(rng.integers(2 ** 31)))
    placed = []
    for k in range(n):
        cls = first_class if (k == 0 and first_class is not None) else sampler(rng)
        p = _place(group(cls, rng, p_extra), rng, size, scene.horizon, placed, person_px)
        if p is not None:
            placed.append(p)
    scene.groups = sorted(placed, key=lambda p: p.gy)  # far (higher up) first
    return scene


# -- drawing ---------------------------------------------------------------------------

def _rgb(c) -> tuple:
    return tuple(int(255 * min(max(float(v), 0.0), 1.0) + 0.5) for v in c)


def _background(scene: Scene) -> Image.Image:
    """Sky/ground or wall/floor with gradients, blotchy texture and muted clutter, at 2x.

    The smooth part is computed at 1x and upsampled: it has no edges to anti-alias."""
    rng = np.random.default_rng(scene.bg_seed)
    n, S, hz = scene.size, scene.size * SUPERSAMPLE, scene.horizon * SUPERSAMPLE
    top, bottom = (_WALLS, _FLOORS) if scene.indoor else (_SKIES, _GROUNDS)
    c_top = np.asarray(F.jitter(top[rng.integers(len(top))], rng, 0.08), np.float32)
    c_bot = np.asarray(F.jitter(bottom[rng.integers(len(bottom))], rng, 0.08), np.float32)
    y = (np.arange(n, dtype=np.float32)[:, None] + 0.5) / n                      # [n, 1]
    h = scene.horizon / n
    col = np.where((y < h)[..., None], c_top * (0.85 + 0.2 * y / max(h, 1e-3))[..., None],
                   c_bot * (0.9 + 0.15 * np.clip((y - h) / max(1 - h, 1e-3), 0, 1))[..., None])  # [n, 1, 3]
    blotch = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((n, n), Image.BILINEAR)
    img = col + (np.asarray(blotch, np.float32) * (0.12 / 255) - 0.06)
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((S, S), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 5))):  # clutter: clouds / bushes / windows, all low contrast
        w, h = rng.uniform(0.1, 0.3) * S, rng.uniform(0.05, 0.15) * S
        x = rng.uniform(-0.1, 1.0) * S
        if scene.indoor:
            yy = rng.uniform(0.05, 0.7) * hz
            d.rectangle([x, yy, x + w, yy + h * 1.5], fill=_rgb(c_top * 0.85), outline=_rgb(c_top * 0.7), width=3)
        elif rng.random() < 0.5:
            yy = rng.uniform(0.0, 0.6) * hz
            d.ellipse([x, yy, x + w, yy + h], fill=_rgb(c_top * 0.5 + 0.5))
        else:
            d.ellipse([x, hz - h * 0.8, x + w, hz + h * 0.2], fill=_rgb(c_bot * 0.75))
    return im


def _draw_prim(d: ImageDraw.ImageDraw, p: F.Prim, placed: Placed) -> None:
    k = SUPERSAMPLE
    pts = placed.to_px(p.pts) * k
    w = max(1.0, p.width * placed.scale * k)
    fill = _rgb(p.colour)
    xy = [tuple(q) for q in pts]
    if p.kind == "poly":
        d.polygon(xy, fill=fill, outline=_rgb(F.DARK) if p.outline else None,
                  width=max(1, round(0.012 * placed.scale * k)) if p.outline else 1)
    elif p.kind == "limb":
        d.line(xy, fill=fill, width=round(w))
        for x, y in xy:
            d.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=fill)
    elif p.kind == "circle":
        (x, y), r = xy[0], p.width * placed.scale * k
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=_rgb(F.DARK) if p.outline else None,
                  width=max(1, round(0.012 * placed.scale * k)) if p.outline else 1)
    elif p.kind == "ring":
        d.line(xy + xy[:1], fill=fill, width=round(w), joint="curve")
    else:  # line
        d.line(xy, fill=fill, width=round(w), joint="curve")


def render(scene: Scene) -> tuple[Image.Image, list[dict]]:
    """The image (RGB, ``size`` x ``size``) and the ground truth of each group.

    Returns one dict per interaction pair, in group order: ``box_h``, ``box_o`` (float64 [4],
    coord, whole pixels, inside the image), ``hoi``, ``verb``, ``object``, ``group`` (int:
    the index of the pair's group in ``scene.groups``).
    """
    im = _background(scene)
    d = ImageDraw.Draw(im)
    for placed in scene.groups:
        for p in sorted(placed.group.prims, key=lambda p: p.layer):  # stable: keeps build order in a layer
            _draw_prim(d, p, placed)
    im = im.reduce(SUPERSAMPLE)
    # Sensor-like noise, at the final resolution.
    rng = np.random.default_rng(scene.bg_seed + 1)
    arr = np.asarray(im, np.int16) + rng.integers(-6, 7, (scene.size, scene.size, 1), dtype=np.int16)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    pairs = []
    for g, placed in enumerate(scene.groups):
        boxes = {e: _pixel_box(placed.box(e), scene.size) for e in placed.group.labels}
        for eh, eo, c in placed.group.pairs:
            pairs.append({"box_h": boxes[eh], "box_o": boxes[eo], "hoi": c, "verb": HOI[c][0], "object": HOI[c][1],
                          "group": g})
    return im, pairs


def _pixel_box(b: np.ndarray, size: int) -> np.ndarray:
    """Round a coord box outward to whole pixels and clip it to the image."""
    return np.clip(np.concatenate([np.floor(b[:2]), np.ceil(b[2:])]), 0, size)


# -- crops -------------------------------------------------------------------------------

def union_crop(im: Image.Image, box_h, box_o, out: int) -> Image.Image:
    """The union box of a pair squashed to ``out`` x ``out`` (RGB): what the teacher cuts by
    default (``--crop-mode squash``, no margin). Used to measure the CLIP on the teacher's
    own input, never to train it."""
    u = np.concatenate([np.minimum(box_h[:2], box_o[:2]), np.maximum(box_h[2:], box_o[2:])]).astype(np.float64)
    W, H = im.size
    u = np.clip(u, 0, [W, H, W, H])
    u[2:] = np.maximum(u[2:], u[:2] + 2)  # never empty
    return im.resize((out, out), Image.BILINEAR, box=tuple(float(v) for v in u))


def photo_crop(im: Image.Image, subject, rng, out: int) -> Image.Image:
    """A square close-up of ``subject`` (float64 [4] coord box: one interaction's person and
    objects), framed as a photographer would: the subject's long side fills 60-85% of the
    frame, off-centre by a little but whole, the square shifted to stay inside the image
    (never squashed, never cut to a box edge). Resized to ``out`` x ``out``."""
    size = np.array(im.size, np.float64)
    wh = subject[2:] - subject[:2]
    side = min(float(wh.max() / rng.uniform(0.6, 0.85)), float(size.min()))
    centre = (subject[:2] + subject[2:]) / 2 + rng.normal(0, 0.06, 2) * side
    margin = 0.04 * side
    lo = np.maximum(0, subject[2:] + margin - side)   # the subject stays in the frame ...
    hi = np.minimum(size - side, subject[:2] - margin)  # ... and the frame in the image
    x0, y0 = np.clip(np.clip(centre - side / 2, lo, np.maximum(lo, hi)), 0, size - side)
    return im.resize((out, out), Image.BILINEAR, box=(float(x0), float(y0), float(x0 + side), float(y0 + side)))
