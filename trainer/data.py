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
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import numpy as np
import torch

from cache import schema as S
from cache.store import TeacherCache
from hoicore.errors import InputError
from hoicore.memory import release_free_memory
from hoidata import boxes as B
from hoidata import pair_labels as PL
from hoidata import ragged
from hoidata.labelspace import LabelSpace

from .config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

def labelspace_of(cache: TeacherCache, override: str | None = None) -> LabelSpace:
    """The label space of the cache: ``override`` (a built-in name or a file), else the
    cache's ``dataset.labelspace`` (a name, a file or the label-space dict itself); checked
    against the cache's classes."""
    src = override if override is not None else cache.dataset.labelspace
    if src is None:
        raise ConfigError(f"{cache.path} does not record its label space (dataset.labelspace); pass --labelspace "
                          "NAME|FILE")
    ls = LabelSpace.from_dict(src, source=f"{cache.path} dataset.labelspace") if isinstance(src, dict) \
        else LabelSpace.load(src)
    verb, obj = cache.read("text/verb"), cache.read("text/object")
    if ls.num_classes != len(verb):
        raise ConfigError(f"label space {ls.name!r} has {ls.num_classes} classes but {cache.path} has {len(verb)}")
    bad = np.flatnonzero((ls.hoi_verb != verb) | (ls.hoi_object != obj))
    if len(bad):
        c = int(bad[0])
        raise ConfigError(f"label space {ls.name!r} disagrees with {cache.path} on class {c}: (verb, object) "
                          f"{ls.hoi[c]} vs ({verb[c]}, {obj[c]})")
    return ls


def seen_classes(cache: TeacherCache, split: str) -> np.ndarray:
    """bool [C]: the classes training may see; all but the unseen ones of zero-shot ``split``
    of the cache's label space ('' for none: every class)."""
    num_classes = cache.layout["num_classes"]
    if not split:
        return np.ones(num_classes, dtype=bool)
    splits = labelspace_of(cache).zero_shot_splits
    if split not in splits:
        raise ConfigError(f"--unseen {split!r}: the label space of {cache.path} has no such zero-shot split "
                          f"(it has {', '.join(sorted(splits)) or 'none'})")
    seen = np.ones(num_classes, dtype=bool)
    seen[np.asarray(splits[split]["unseen"], dtype=np.int64)] = False
    return seen


def resolve_crop_mode(setting: str, cache: TeacherCache) -> str:
    """The teacher's crop mode: the setting, or for 'auto' the cache's ``teacher.crop_mode``."""
    return teacher_crop_mode(setting, cache.teacher, str(cache.path))


def teacher_crop_mode(setting: str, teacher: S.TeacherAttrs, where: str) -> str:
    """The crop mode a student pools with: ``setting``, or for 'auto' the one the teacher
    (recorded in ``where``) cut with."""
    mode = teacher.crop_mode
    if setting != "auto":
        if mode is not None and setting != mode:
            log.warning("--crop-mode %s differs from the crop rule the teacher cut with (%s, in %s): the union "
                        "branch pools other regions than its teacher saw", setting, mode, where)
        return setting
    if mode is None:
        log.warning("%s does not record teacher.crop_mode; assuming 'squash' (pass --crop-mode to say otherwise)",
                    where)
        return "squash"
    if mode not in B.CROP_MODES:
        raise InputError(f"{where}: teacher.crop_mode is {mode!r}; this version knows {', '.join(B.CROP_MODES)}")
    return mode


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
        self.grid = (int(lay["grid"][0]), int(lay["grid"][1]))
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
        chunk = lay["image_chunk"]
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
        per_image = (gh * gw * lay["embed_dim"] * 2 if "dense" in self.what else 0) + lay["num_classes"] * 2
        # boxes and grid boxes (2 x [3, 4] float32), det scores ([2] float32), object and row (int64)
        per_pair = 2 * 12 * 4 + 2 * 4 + 2 * 8 + (lay["num_classes"] * 2 if "union_score" in self.what else 0)
        per_image += lay["embed_dim"] * 2 if "global_embedding" in self.what else 0
        per_pair += lay["embed_dim"] * 2 if "union_embedding" in self.what else 0
        per_image += lay["num_classes"] if "image_labels" in self.what else 0  # bool
        per_pair += lay["num_classes"] if "pair_labels" in self.what else 0
        return self.num_images * per_image + lay["num_pairs"] * per_pair

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
        gt_offsets, num_classes = ragged.offsets(counts), self.cache.layout["num_classes"]
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


def refuse_test_split(cache: TeacherCache) -> None:
    """Refuse to train on a cache its dataset attributes call the test split: every number
    measured on it afterwards would be of a model that saw it."""
    if cache.dataset.split == "test":
        raise ConfigError(f"{cache.path} is a test split (its dataset.split): a student trained on it is measured "
                          "on what it saw; train on the train split's cache (hoi teacher-cache --split train)")


def require_ground_truth(cache: TeacherCache, why: str) -> None:
    """Refuse a cache without ground truth (built without annotations: ``gt/*`` empty), naming it and ``why``."""
    if cache.layout["num_gt"] == 0:
        raise ConfigError(f"{cache.path} holds no ground truth (it was built without --annotations), and {why} "
                          "needs it: rebuild it with `hoi teacher-cache ... --annotations FILE` (the CLIP arrays "
                          "come out the same), or train with --supervision clip")


def object_class_mask(cache: TeacherCache) -> np.ndarray:
    """bool [O, C]: True where class c is an HOI class of object o, for every object that the
    text classes or the detections name (an object without classes gets an all-False row)."""
    cls_obj = cache.read("text/object").astype(np.int64)
    labels = cache.read("detections/label")
    num_objects = int(max(cls_obj.max(initial=-1), labels.max(initial=-1))) + 1
    mask = np.zeros((num_objects, len(cls_obj)), dtype=bool)
    mask[cls_obj, np.arange(len(cls_obj))] = True
    return mask


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

