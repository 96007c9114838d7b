"""Box geometry shared by the loader and ``hoi detect``: pixel boxes into the dense map's
grid, and the :class:`~trainer.batch.Block` of candidate pairs built from detections.
"""

from __future__ import annotations

import numpy as np

from hoidata import boxes as B

from .batch import Block


def to_grid(boxes: np.ndarray, sizes: np.ndarray, grid: tuple[int, int], mode: str) -> np.ndarray:
    """float32 [K, 4]: pixel boxes [K, 4] (coord) of images of sizes [K, 2] (w, h) in grid
    coordinates of the dense map (cell j covers [j, j + 1)), clipped to the grid.

    The dense map covers the whole image made square by the teacher's crop ``mode``.
    """
    gh, gw = grid
    sizes = sizes.astype(np.float64)
    view = B.square(np.concatenate([np.zeros_like(sizes), sizes], 1), mode)
    scale = np.array([gw, gh]) / (view[:, 2:] - view[:, :2])
    out = (boxes.reshape(-1, 2, 2) - view[:, None, :2]) * scale[:, None]
    return np.clip(out.reshape(-1, 4), 0, [gw, gh, gw, gh]).astype(np.float32)


def pair_block(image: np.ndarray, size: np.ndarray, *, det_box: np.ndarray, det_score: np.ndarray,
               det_label: np.ndarray, human: np.ndarray, obj: np.ndarray, pair_offsets: np.ndarray,
               grid: tuple[int, int], crop_mode: str, union_margin: float, dense: np.ndarray | None = None,
               union: np.ndarray | None = None) -> Block:
    """A :class:`Block` of images and their candidate pairs, from detections (no teacher scores).

    image int64 [n] (any ids), size float32 [n, 2] (w, h); det_box float32 [T, 4] (coord),
    det_score float32 [T], det_label int [T]: the images' detections; human, obj int64 [P]:
    each pair's detection rows (into det_*), pairs in image order with pair_offsets int64
    [n + 1]; dense float16 [n, H, W, D] | None; union float32 [P, 4]: the union boxes as
    stored (computed from the two boxes when None). Pair rows are 0..P-1.
    """
    human, obj = np.asarray(human, np.int64), np.asarray(obj, np.int64)
    counts = np.diff(pair_offsets)
    if union is None:
        union = B.union_coord(det_box[human], det_box[obj]) if len(human) else np.zeros((0, 4), np.float32)
    boxes = np.stack([det_box[human], det_box[obj], union], 1).astype(np.float32).reshape(-1, 3, 4)
    regions = boxes.copy()
    regions[:, 2] = B.crop_region(union, union_margin, crop_mode)
    pair_size = np.repeat(np.repeat(np.asarray(size, np.float32), counts, 0), 3, 0)
    grid_boxes = to_grid(regions.reshape(-1, 4), pair_size, grid, crop_mode).reshape(-1, 3, 4)
    return Block(image=np.asarray(image, np.int64), size=np.asarray(size, np.float32), dense=dense,
                 global_score=None, pair_offsets=np.asarray(pair_offsets, np.int64),
                 pair_row=np.arange(len(human), dtype=np.int64), boxes=boxes, grid_boxes=grid_boxes,
                 object=np.asarray(det_label, np.int64)[obj],
                 det_score=np.stack([det_score[human], det_score[obj]], 1).astype(np.float32).reshape(-1, 2),
                 union_score=None)
