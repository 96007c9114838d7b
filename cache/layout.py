"""Where each shard's rows live: images cut into shards, pair rows padded per shard.

Pure arithmetic on counts, so the coordinator can lay out the whole store before any
image is decoded, and every shard knows which chunks are its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .schema import LayoutAttrs


@dataclass(frozen=True)
class Layout:
    """Shard geometry of a store.

    pair_begin, pair_end: int64 [N] pair rows of each image.
    shard_rows: int64 [K + 1] pair-row start of each shard (multiples of pair_chunk), then
    the total number of pair rows R.
    """

    num_images: int
    images_per_shard: int
    image_chunk: int
    pair_chunk: int
    pair_begin: np.ndarray
    pair_end: np.ndarray
    shard_rows: np.ndarray

    @property
    def num_shards(self) -> int:
        return len(self.shard_rows) - 1

    @property
    def num_pair_rows(self) -> int:
        return int(self.shard_rows[-1])

    def shard_images(self, k: int) -> tuple[int, int]:
        start = k * self.images_per_shard
        return start, min(start + self.images_per_shard, self.num_images)

    def shard_pair_rows(self, k: int) -> tuple[int, int]:
        return int(self.shard_rows[k]), int(self.shard_rows[k + 1])

    @property
    def num_pairs(self) -> int:
        return int((self.pair_end - self.pair_begin).sum())

    def record(self, *, num_classes: int, embed_dim: int, grid: tuple[int, int], num_detections: int,
               num_gt: int) -> LayoutAttrs:
        """The store's ``layout`` attribute: this geometry and the sizes of the other dims."""
        return LayoutAttrs(num_images=self.num_images, images_per_shard=self.images_per_shard,
                           image_chunk=self.image_chunk, pair_chunk=self.pair_chunk, num_shards=self.num_shards,
                           num_pair_rows=self.num_pair_rows, num_pairs=self.num_pairs,
                           shard_rows=tuple(int(r) for r in self.shard_rows), num_classes=int(num_classes),
                           embed_dim=int(embed_dim), grid=(int(grid[0]), int(grid[1])),
                           num_detections=int(num_detections), num_gt=int(num_gt))


def plan(pairs_per_image: np.ndarray, images_per_shard: int = 256, image_chunk: int = 16,
         pair_chunk: int = 256) -> Layout:
    """Lay out pair rows so that no chunk of any shard-written array spans two shards.

    image_chunk is lowered to a divisor of images_per_shard (image-indexed chunks then
    align with shards); each shard's pair rows start on a multiple of pair_chunk.
    """
    image_chunk = math.gcd(image_chunk, images_per_shard)
    counts = np.asarray(pairs_per_image, dtype=np.int64)
    n = len(counts)
    k = max(1, -(-n // images_per_shard))
    shard_of_image = np.arange(n) // images_per_shard
    per_shard = np.bincount(shard_of_image, weights=counts, minlength=k).astype(np.int64)
    padded = -(-per_shard // pair_chunk) * pair_chunk
    shard_rows = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    # within a shard, images' rows follow each other; the shard starts at its padded base
    within = np.cumsum(counts) - counts
    first_of_shard = np.searchsorted(shard_of_image, np.arange(k))
    shard_base_cum = within[np.minimum(first_of_shard, max(n - 1, 0))] if n else np.zeros(k, np.int64)
    begin = shard_rows[shard_of_image] + within - shard_base_cum[shard_of_image] if n else np.zeros(0, np.int64)
    return Layout(n, images_per_shard, image_chunk, pair_chunk, begin.astype(np.int64),
                  (begin + counts).astype(np.int64), shard_rows)
