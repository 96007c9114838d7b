"""Box conventions, in one place.

Three conventions for ``[x1, y1, x2, y2]`` boxes meet in HICO-DET work:

- ``pixel1``: 1-based inclusive pixel indices, the frame of the official ground truth
  (``anno_bbox.mat``); width = x2 - x1 + 1.
- ``pixel0``: 0-based inclusive pixel indices, the frame of the official detection files;
  the official evaluation adds 1 to reach ``pixel1``.
- ``coord``: continuous corner coordinates (pixel i covers [i, i+1)), as detectors and
  DETR-style heads output them; ``[x1, y1, x2, y2]`` covers pixels x1+1 .. x2 in the
  ``pixel1`` frame, so it is taken as ``[x1 + 1, y1 + 1, x2, y2]``.

Everything inside the project (annotations, detections, the cache) keeps boxes in
``coord``; the evaluator converts to ``pixel1``, the frame the official code compares in.
"""

from __future__ import annotations

import numpy as np

BOX_FORMATS = ("pixel0", "pixel1", "coord")

# How a non-square region becomes the square input of an image encoder: resized as it is
# ('squash'), grown to its long side ('pad') or cut to its short side ('center'), around
# its centre. The teacher cuts with this rule and the student pools the same regions.
CROP_MODES = ("squash", "pad", "center")

# Offsets that take each convention to pixel1: [dx1, dy1, dx2, dy2].
_TO_PIXEL1 = {
    "pixel0": np.array([1.0, 1.0, 1.0, 1.0]),
    "pixel1": np.array([0.0, 0.0, 0.0, 0.0]),
    "coord": np.array([1.0, 1.0, 0.0, 0.0]),
}


def check_format(fmt: str) -> str:
    if fmt not in BOX_FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; expected one of {', '.join(BOX_FORMATS)}")
    return fmt


def convert(boxes, src: str, dst: str) -> np.ndarray:
    """float64 [..., 4] boxes from convention ``src`` to ``dst`` (exact: whole-pixel shifts)."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape [..., 4], got {b.shape}")
    return b + (_TO_PIXEL1[check_format(src)] - _TO_PIXEL1[check_format(dst)])


def clip_coord(boxes: np.ndarray, width, height) -> np.ndarray:
    """Clip ``coord`` boxes [..., 4] to an image of ``width`` x ``height`` pixels."""
    b = np.array(boxes, dtype=np.float64, copy=True)
    b[..., 0::2] = np.clip(b[..., 0::2], 0, np.asarray(width, dtype=np.float64)[..., None])
    b[..., 1::2] = np.clip(b[..., 1::2], 0, np.asarray(height, dtype=np.float64)[..., None])
    return b


def area_coord(boxes: np.ndarray) -> np.ndarray:
    """[...] areas of ``coord`` boxes; zero for empty or inverted boxes."""
    b = np.asarray(boxes, dtype=np.float64)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def union_coord(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., 4] smallest box enclosing both ``a`` and ``b`` (any convention, elementwise)."""
    a, b = np.asarray(a), np.asarray(b)
    return np.concatenate([np.minimum(a[..., :2], b[..., :2]), np.maximum(a[..., 2:], b[..., 2:])], axis=-1)


def square(boxes, mode: str) -> np.ndarray:
    """float64 [K, 4] ``coord`` boxes made square by crop ``mode`` (see ``CROP_MODES``)."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, not {mode!r}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if mode == "squash":
        return b
    centre = (b[:, :2] + b[:, 2:]) / 2
    wh = b[:, 2:] - b[:, :2]
    half = (wh.max(1) if mode == "pad" else wh.min(1))[:, None] / 2
    return np.concatenate([centre - half, centre + half], 1)


def crop_region(boxes, margin: float, mode: str) -> np.ndarray:
    """float64 [K, 4]: what is cut for ``coord`` boxes [K, 4]: grown by ``margin`` times their
    width and height on each side, then made square by ``mode``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    wh = b[:, 2:] - b[:, :2]
    return square(b + np.concatenate([-wh, wh], 1) * margin, mode)
