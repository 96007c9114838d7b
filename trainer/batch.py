"""The student's samples: a :class:`Block` of images and their pairs as numpy arrays (what
the loader reads and batches are cut from), a :class:`Window` of blocks shuffled together,
and a :class:`Batch`, the same as tensors on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from hoidata import ragged


@dataclass
class Block:
    """The samples of some images, as numpy arrays (P pairs in image order, CSR by image).

    image: int64 [n] cache image index; size: float32 [n, 2] (w, h) pixels;
    dense: float16 [n, H, W, D] | None; global_score: float16 [n, C] | None (raw cosines);
    pair_offsets: int64 [n + 1]; pair_row: int64 [P] cache pair row;
    boxes: float32 [P, 3, 4] human, object, union boxes in pixels (coord);
    grid_boxes: float32 [P, 3, 4] the regions to pool, in grid coordinates (the union as the
    teacher cut it: with its margin, made square);
    object: int64 [P] detected object class; det_score: float32 [P, 2] human, object;
    union_score: float16 [P, C] | None (raw cosines);
    global_embedding: float16 [n, D] | None, union_embedding: float16 [P, D] | None: CLIP's
    L2-normalised embeddings of the whole image and of the union crop (feature distillation);
    image_labels: bool [n, C] | None, pair_labels: bool [P, C] | None: the ground-truth classes
    of each image and of each candidate pair (:mod:`hoidata.pair_labels`; the supervised references).
    """

    image: np.ndarray
    size: np.ndarray
    dense: np.ndarray | None
    global_score: np.ndarray | None
    pair_offsets: np.ndarray
    pair_row: np.ndarray
    boxes: np.ndarray
    grid_boxes: np.ndarray
    object: np.ndarray
    det_score: np.ndarray
    union_score: np.ndarray | None
    global_embedding: np.ndarray | None = None
    union_embedding: np.ndarray | None = None
    image_labels: np.ndarray | None = None
    pair_labels: np.ndarray | None = None

    _PER_IMAGE = ("image", "size", "dense", "global_score", "global_embedding", "image_labels")
    _PER_PAIR = ("pair_row", "boxes", "grid_boxes", "object", "det_score", "union_score", "union_embedding",
                 "pair_labels")

    def __len__(self) -> int:
        return len(self.image)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_row)

    @property
    def pair_image(self) -> np.ndarray:
        """int64 [P]: index (within the block) of each pair's image."""
        return ragged.owners(np.diff(self.pair_offsets))

    def select(self, idx: np.ndarray) -> "Block":
        """The block of images ``idx`` (block-local, in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        counts = np.diff(self.pair_offsets)[idx]
        rows = ragged.ranges(self.pair_offsets[idx], counts)
        out = {k: None if getattr(self, k) is None else getattr(self, k)[idx] for k in self._PER_IMAGE}
        out.update({k: None if getattr(self, k) is None else getattr(self, k)[rows] for k in self._PER_PAIR})
        return Block(pair_offsets=ragged.offsets(counts), **out)

    @staticmethod
    def concat(blocks: list["Block"]) -> "Block":
        if len(blocks) == 1:
            return blocks[0]
        out = {}
        for f in fields(Block):
            parts = [getattr(b, f.name) for b in blocks]
            if f.name == "pair_offsets":
                starts = np.cumsum([0] + [b.num_pairs for b in blocks[:-1]])
                out[f.name] = np.concatenate([[0]] + [p[1:] + s for p, s in zip(parts, starts)]).astype(np.int64)
            else:
                out[f.name] = None if parts[0] is None else np.concatenate(parts)
        return Block(**out)

    def to_batch(self, object_class_mask: torch.Tensor, device: torch.device) -> "Batch":
        """Tensors on ``device`` (scores and maps as float32)."""
        def t(x, dtype=torch.float32):  # moved in the cache's dtype (half the bytes), converted there
            return None if x is None else torch.from_numpy(np.ascontiguousarray(x)).to(device).to(dtype)
        norm = self.boxes[:, :2] / np.repeat(self.size, np.diff(self.pair_offsets), 0)[:, None, [0, 1, 0, 1]]
        obj = t(self.object, torch.int64)
        return Batch(dense=t(self.dense), global_score=t(self.global_score), pair_image=t(self.pair_image, torch.int64),
                     grid_boxes=t(self.grid_boxes), norm_boxes=t(norm), object=obj, det_score=t(self.det_score),
                     union_score=t(self.union_score), class_mask=object_class_mask[obj],
                     global_embedding=t(self.global_embedding), union_embedding=t(self.union_embedding),
                     image_labels=t(self.image_labels, torch.bool), pair_labels=t(self.pair_labels, torch.bool))


@dataclass
class Batch:
    """A training or inference batch of B images and their P pairs (torch, on the device).

    dense: float32 [B, H, W, D]; global_score: float32 [B, C] | None; pair_image: int64 [P];
    grid_boxes: float32 [P, 3, 4] (human, object, union; grid coordinates);
    norm_boxes: float32 [P, 2, 4] (human, object; divided by the image size);
    object: int64 [P]; det_score: float32 [P, 2]; union_score: float32 [P, C] | None;
    class_mask: bool [P, C], True on the HOI classes of each pair's object;
    global_embedding: float32 [B, D] | None; union_embedding: float32 [P, D] | None (CLIP's own);
    image_labels: bool [B, C] | None; pair_labels: bool [P, C] | None (ground truth, see :class:`Block`).
    """

    dense: torch.Tensor
    global_score: torch.Tensor | None
    pair_image: torch.Tensor
    grid_boxes: torch.Tensor
    norm_boxes: torch.Tensor
    object: torch.Tensor
    det_score: torch.Tensor
    union_score: torch.Tensor | None
    class_mask: torch.Tensor
    global_embedding: torch.Tensor | None = None
    union_embedding: torch.Tensor | None = None
    image_labels: torch.Tensor | None = None
    pair_labels: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return self.dense.shape[0]

    @property
    def num_pairs(self) -> int:
        return self.pair_image.shape[0]


class Window:
    """Blocks shuffled together, read as if joined by :meth:`Block.concat` but never copied
    whole: :meth:`select` gathers a batch's images from the blocks that hold them, so the
    streaming pass holds each window once, not the blocks and their join side by side."""

    def __init__(self, blocks: list[Block]):
        self.blocks = blocks
        self.starts = ragged.offsets(np.array([len(b) for b in blocks], dtype=np.int64))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def select(self, idx: np.ndarray) -> Block:
        """``Block.concat(self.blocks).select(idx)``, the same arrays: images ``idx`` (window-local) in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        owner = np.searchsorted(self.starts, idx, side="right") - 1
        used = np.unique(owner)
        if len(used) <= 1:  # one block (or no image at all)
            k = int(used[0]) if len(used) else 0
            return self.blocks[k].select(idx - self.starts[k])
        where = [np.flatnonzero(owner == k) for k in used]  # positions in idx of each block's images
        joined = Block.concat([self.blocks[k].select(idx[w] - self.starts[k]) for k, w in zip(used, where)])
        return joined.select(np.argsort(np.concatenate(where), kind="stable"))
