"""Samples from a teacher cache: per-image dense maps, pairs and CLIP scores, read in blocks.

A *block* is a run of images inside one shard that starts on an image chunk of the cache,
so its dense maps are whole Zarr chunks (reading one image of a 16-image chunk would
decode all 16). Its pair rows are contiguous too. Training streams blocks in a shuffled
order (seed and epoch decide it), shuffles images across a few blocks at a time, and reads
ahead in a thread; memory is a few blocks whatever the split's size. A small split is read
once into RAM instead and shuffled whole.

Skipped images (``images/status`` not OK: no dense map) are left out of every block.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Iterator

import numpy as np

from cache import schema as S
from cache.store import TeacherCache
from hoicore.memory import release_free_memory
from hoidata import pair_labels as PL
from hoidata import ragged

from .batch import Block, Window
from .cache_info import require_ground_truth, seen_classes
from .config import TrainConfig
from .geometry import pair_block

log = logging.getLogger(__name__)


class CacheReader:
    """Reads blocks of images from an open cache; holds only per-image index arrays.

    crop_mode: the teacher's (see :func:`resolve_crop_mode`). what: which optional arrays to
    read: any of 'dense', 'global_score', 'union_score', 'global_embedding', 'union_embedding',
    and the ground truth's 'image_labels', 'pair_labels' (a cache without it is refused by
    name); label_classes: bool [C], the classes labels may carry (the others are removed from
    every label, as --unseen asks; all when None).
    """

    def __init__(self, cache: TeacherCache, crop_mode: str,
                 what: tuple[str, ...] = ("dense", "global_score", "union_score"),
                 label_classes: np.ndarray | None = None):
        self.cache, self.crop_mode, self.what = cache, crop_mode, set(what)
        self.labels = self.what & {"image_labels", "pair_labels"}
        if self.labels:
            require_ground_truth(cache, "training with labels")
            self.gt_offsets = cache.read("gt/offsets")
            self.label_classes = label_classes
        self.union_margin = float(cache.teacher.union_margin)
        lay = cache.layout
        self.grid = (int(lay.grid[0]), int(lay.grid[1]))
        self.begin, self.end = cache.read("pairs/begin"), cache.read("pairs/end")
        self.sizes = cache.read("images/size").astype(np.float32)
        self.ok = cache.read("images/status") == S.STATUS_OK
        self.det_offsets = cache.read("detections/offsets")

    @property
    def num_images(self) -> int:
        return len(self.begin)

    def blocks(self, block_images: int) -> list[tuple[int, int]]:
        """[(i0, i1)]: image ranges inside one shard each, starting on image chunks, at most
        ``block_images`` images (rounded up to a whole chunk)."""
        lay = self.cache.layout
        chunk = lay.image_chunk
        step = max(1, -(-block_images // chunk)) * chunk
        out = []
        for k in range(self.cache.num_shards):
            lo, hi = self.cache.shard_images(k)
            out.extend((i, min(i + step, hi)) for i in range(lo, hi, step))
        return out

    def estimate_bytes(self) -> int:
        """Bytes a whole split takes in RAM when read (what 'auto' in-memory mode compares)."""
        lay = self.cache.layout
        gh, gw = self.grid
        per_image = (gh * gw * lay.embed_dim * 2 if "dense" in self.what else 0) + lay.num_classes * 2
        # boxes and grid boxes (2 x [3, 4] float32), det scores ([2] float32), object and row (int64)
        per_pair = 2 * 12 * 4 + 2 * 4 + 2 * 8 + (lay.num_classes * 2 if "union_score" in self.what else 0)
        per_image += lay.embed_dim * 2 if "global_embedding" in self.what else 0
        per_pair += lay.embed_dim * 2 if "union_embedding" in self.what else 0
        per_image += lay.num_classes if "image_labels" in self.what else 0  # bool
        per_pair += lay.num_classes if "pair_labels" in self.what else 0
        return self.num_images * per_image + lay.num_pairs * per_pair

    def read(self, i0: int, i1: int) -> Block:
        """The OK images of [i0, i1) with all their pairs."""
        c = self.cache
        imgs = np.arange(i0, i1)[self.ok[i0:i1]]
        counts = (self.end - self.begin)[imgs]
        local = imgs - i0
        lo = int(self.begin[imgs].min()) if counts.sum() else 0
        hi = int(self.end[imgs].max()) if counts.sum() else 0
        rows = ragged.ranges(self.begin[imgs] - lo, counts)  # pair rows relative to lo, in image order
        d0, d1 = int(self.det_offsets[i0]), int(self.det_offsets[i1])

        def image_array(name):  # whole chunks read, skipped images dropped after
            return c.read(name, slice(i0, i1))[local]
        block = pair_block(
            imgs.astype(np.int64), self.sizes[imgs],
            det_box=c.read("detections/box", slice(d0, d1)), det_score=c.read("detections/score", slice(d0, d1)),
            det_label=c.read("detections/label", slice(d0, d1)),
            human=c.read("pairs/human", slice(lo, hi))[rows] - d0, obj=c.read("pairs/object", slice(lo, hi))[rows] - d0,
            pair_offsets=ragged.offsets(counts), grid=self.grid,
            crop_mode=self.crop_mode, union_margin=self.union_margin,
            dense=image_array("global/dense") if "dense" in self.what else None,
            union=c.read("pairs/box", slice(lo, hi))[rows])
        block.pair_row = (lo + rows).astype(np.int64)
        if "global_score" in self.what:
            block.global_score = image_array("global/score")
        if "union_score" in self.what:
            block.union_score = c.read("union/score", slice(lo, hi))[rows]
        if "global_embedding" in self.what:
            block.global_embedding = image_array("global/embedding")
        if "union_embedding" in self.what:
            block.union_embedding = c.read("union/embedding", slice(lo, hi))[rows]
        if self.labels:
            self._add_labels(block, imgs, i0, i1)
        return block

    def _add_labels(self, block: Block, imgs: np.ndarray, i0: int, i1: int) -> None:
        """Set the block's image and pair labels from the ground truth of its images ``imgs``
        (cache indices within [i0, i1)), without the classes ``label_classes`` leaves out."""
        g0, g1 = int(self.gt_offsets[i0]), int(self.gt_offsets[i1])
        counts = np.diff(self.gt_offsets)[imgs]
        rows = ragged.ranges(self.gt_offsets[imgs] - g0, counts)
        hoi = self.cache.read("gt/hoi", slice(g0, g1))[rows]
        gt_offsets, num_classes = ragged.offsets(counts), self.cache.layout.num_classes
        if "image_labels" in self.labels:
            block.image_labels = PL.image_labels(gt_offsets, hoi, num_classes)
        if "pair_labels" in self.labels:
            block.pair_labels = PL.pair_labels(
                block.pair_offsets, block.boxes[:, 0], block.boxes[:, 1], gt_offsets,
                self.cache.read("gt/box_h", slice(g0, g1))[rows], self.cache.read("gt/box_o", slice(g0, g1))[rows],
                hoi, num_classes)
        if self.label_classes is not None:
            for name in self.labels:
                setattr(block, name, getattr(block, name) & self.label_classes)

    def read_all(self, block_images: int) -> Block:
        return Block.concat([self.read(i0, i1) for i0, i1 in self.blocks(block_images)])


def prefetched(read: Callable, items: list, depth: int) -> Iterator:
    """``read(item)`` for each item, in order, computed up to ``depth`` items ahead in a thread
    (Zarr decompression releases the GIL). Errors surface in the consumer."""
    if depth == 0:
        yield from (read(x) for x in items)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for x in items:
                if stop.is_set():
                    return
                q.put((True, read(x)))
        except BaseException as e:  # forwarded to the consumer, re-raised there
            q.put((False, e))

    thread = threading.Thread(target=work, daemon=True, name="cache-prefetch")
    thread.start()
    try:
        for _ in items:
            ok, value = q.get()
            if not ok:
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


class TrainData:
    """Shuffled batches (numpy :class:`Block` of ``batch_size`` images) of a training cache, per epoch.

    The order depends on (seed, epoch) only, so a resumed run sees the batches an
    uninterrupted one would. In memory, the whole split is permuted; streamed, blocks are
    permuted, and images are permuted within groups of ``shuffle_blocks`` blocks, the
    remainder of a group carried into the next so only the last batch is short.
    """

    def __init__(self, cache: TeacherCache, config: TrainConfig, crop_mode: str):
        self.config = config
        features = set(config.feature_targets.values())
        what = ("dense",) + tuple(sorted(set(config.loss_targets.values()))) + \
            tuple(f"{t}_embedding" for t in ("global", "union") if t in features)
        self.reader = CacheReader(cache, crop_mode, what, seen_classes(cache, config.unseen))
        self.block_ranges = self.reader.blocks(config.block_images)
        need = self.reader.estimate_bytes()
        self.in_memory = config.in_memory == "yes" or (
            config.in_memory == "auto" and need <= config.in_memory_limit_mb * 2**20)
        log.info("training data: %d images, %s (%.0f MiB for the whole split)", self.reader.ok.sum(),
                 "held in memory" if self.in_memory else f"streamed in blocks of {config.block_images} images",
                 need / 2**20)
        self._all = self.reader.read_all(config.block_images) if self.in_memory else None

    @property
    def num_images(self) -> int:
        return int(self.reader.ok.sum())

    def __len__(self) -> int:
        return -(-self.num_images // self.config.batch_size)

    def epoch(self, epoch: int) -> Iterator[Block]:
        rng = np.random.default_rng([self.config.seed, epoch])
        bs = self.config.batch_size
        if self.in_memory:
            perm = rng.permutation(len(self._all))
            for s in range(0, len(perm), bs):
                yield self._all.select(perm[s:s + bs])
            return
        order = rng.permutation(len(self.block_ranges))
        ranges = [self.block_ranges[k] for k in order]
        blocks = prefetched(lambda r: self.reader.read(*r), ranges, self.config.prefetch)
        pending: Block | None = None
        group: list[Block] = []
        for k, block in enumerate(blocks):
            group.append(block)
            if len(group) < self.config.shuffle_blocks and k < len(ranges) - 1:
                continue
            release_free_memory()  # the last window's arrays are gone: give their pages back
            pool = Window(([pending] if pending is not None else []) + group)
            group, block = [], None  # the window holds the blocks now
            perm = rng.permutation(len(pool))
            full = len(perm) // bs * bs
            for s in range(0, full, bs):
                yield pool.select(perm[s:s + bs])
            pending = pool.select(perm[full:]) if full < len(perm) else None
            pool = None  # the window's blocks freed before the next window is read, not after
        if pending is not None:
            yield pending
