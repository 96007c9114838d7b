"""A synthetic teacher cache with learnable structure, written through the cache API (for the tests and make bench).

For tests and benchmarks of everything downstream of the teacher (the trainer, prediction,
evaluation) without images or CLIP. The world:

- A label space of ``num_classes`` HOI classes over a few objects (or the one given).
  Text embeddings are random unit vectors; each object and the person has a random unit
  "identity" vector. All of these depend on ``teacher_seed`` only, so caches of several
  splits made with the same teacher seed share one teacher (train on one, test on another).
- Per image: a few humans and objects, every human x object a pair, each pair with one
  hidden HOI class of its object (drawn with a long tail, so Rare means something).
  Detections are the ground-truth boxes with jitter.
- The dense map [H, W, D] is noise plus, painted on the grid cells each box covers (the
  image squashed onto the grid, recorded as ``teacher.crop_mode = 'squash'``): the person
  vector on human boxes, the object's identity on object boxes, and the pair's class text
  embedding on a 3 x 3 patch at the midpoint of the human and object centres.
- The "CLIP" scores are read off that map, as a real teacher reads them off pixels: the
  union embedding is the normalised mean of the map over the union box's cells, the
  global embedding the normalised mean over the whole map; scores are raw cosine
  similarities with the text embeddings. So a student that pools the right cells can
  learn the union scores, and the midpoint patch makes pairs that share a human differ.

Shards are generated independently (each from its own seed), so ``workers`` threads give
the same bytes as one.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cache import schema as S
from cache.layout import plan
from cache.store import create, finalize
from hoidata import ragged

IMAGE_SIZES = np.array([(640, 480), (480, 640), (500, 375), (640, 427), (427, 640)], dtype=np.int32)
NOISE = 0.5          # norm of the per-cell noise vector (identity vectors have norm 1)
CLASS_STRENGTH = 2.0  # norm of the class vector painted at a pair's midpoint patch
EMPTY_IMAGE_RATE = 0.03
# CLIP's crop embeddings share a large common component, so raw cosines of one crop differ by
# a few hundredths across classes; a shared direction of this norm (against pooled maps of
# norm about 1), orthogonal to the text embeddings where D > C, compresses the synthetic
# scores to that range.
SHARED = 16.0


def synthetic_labelspace(num_classes: int, classes_per_object: int = 6) -> dict:
    """A label-space dict (hoidata schema) with ``num_classes`` classes over
    ``ceil(num_classes / classes_per_object)`` objects plus ``person`` (object 0); verb 0
    is ``no_interaction``; training counts have a long tail (some classes Rare). One
    zero-shot split, ``unseen_verb`` (UV): the classes of the last verb."""
    num_objects = max(2, -(-num_classes // classes_per_object))
    num_verbs = -(-num_classes // num_objects)
    objects = ["person"] + [f"object{k}" for k in range(num_objects)]
    verbs = ["no_interaction"] + [f"verb{k}" for k in range(1, num_verbs)]
    hoi = [[c // num_objects, 1 + c % num_objects] for c in range(num_classes)]
    rank = np.random.default_rng(12345).permutation(num_classes)
    counts = np.maximum(1, (200 * 0.85 ** rank).astype(int)).tolist()
    prompts = [f"a photo of a person and a {objects[o]}" if v == 0 else f"a photo of a person {verbs[v]} a {objects[o]}"
               for v, o in hoi]
    unseen = [c for c, (v, _) in enumerate(hoi) if v == num_verbs - 1]
    return {"schema": "hoi-labelspace/1", "name": f"synthetic{num_classes}", "objects": objects, "verbs": verbs,
            "hoi": hoi, "human": 0, "train_counts": counts, "rare_threshold": 10, "prompts": prompts,
            "zero_shot_splits": {"unseen_verb": {"setting": "UV", "unseen": unseen}}}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _teacher_world(ls: dict, embed_dim: int, teacher_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """text float32 [C, D], identity float32 [O, D] (person included), shared float32 [D]; unit rows."""
    rng = np.random.default_rng([teacher_seed, 7])
    text = _unit(rng.standard_normal((len(ls["hoi"]), embed_dim)).astype(np.float32))
    identity = _unit(rng.standard_normal((len(ls["objects"]), embed_dim)).astype(np.float32))
    shared = rng.standard_normal(embed_dim).astype(np.float32)
    if len(text) < embed_dim:  # keep it out of the text span, or it would bias every class its own way
        q, _ = np.linalg.qr(text.T)
        shared -= q @ (q.T @ shared)
    return text, identity, _unit(shared)


@dataclass(frozen=True)
class _Scene:
    """One synthetic image. Its k boxes are humans first, then objects; a detection is its
    ground-truth box with jitter. Pairs index those boxes (0..k-1, within the image)."""

    size: tuple[int, int]     # (w, h)
    det: np.ndarray           # float32 [k, 4] detected boxes (coord)
    gt: np.ndarray            # float32 [k, 4] ground-truth boxes (coord)
    labels: np.ndarray        # int32 [k] object of each box (the human object for humans)
    scores: np.ndarray        # float32 [k] detection scores
    pair_h: np.ndarray        # int64 [p] box of each pair's human
    pair_o: np.ndarray        # int64 [p] box of each pair's object
    pair_class: np.ndarray    # int64 [p] hidden HOI class of each pair

    def keep_pairs(self, keep: np.ndarray) -> _Scene:
        """The scene with only the pairs where ``keep`` (bool [p]) holds; boxes unchanged."""
        return replace(self, pair_h=self.pair_h[keep], pair_o=self.pair_o[keep], pair_class=self.pair_class[keep])


def _scene(rng, ls: dict, pairs_per_image: int, class_prob: np.ndarray) -> _Scene:
    """One image: size, detections (boxes, labels, scores), GT boxes, pairs and their classes."""
    w, h = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    if rng.random() < EMPTY_IMAGE_RATE:
        n_h, n_o = int(rng.integers(0, 2)), 0
    else:
        want = max(1, int(rng.integers(max(1, pairs_per_image // 2), pairs_per_image * 3 // 2 + 1)))
        n_h = int(rng.integers(1, min(3, want) + 1))
        n_o = -(-want // n_h)
    hc = rng.uniform([0.15 * w, 0.2 * h], [0.85 * w, 0.8 * h], (n_h, 2))
    hs = rng.uniform([0.12 * w, 0.3 * h], [0.3 * w, 0.6 * h], (n_h, 2))
    oc = hc[rng.integers(0, max(n_h, 1), n_o)] + rng.normal(0, [0.15 * w, 0.15 * h], (n_o, 2)) if n_h else \
        rng.uniform([0, 0], [w, h], (n_o, 2))
    os_ = rng.uniform([0.05 * w, 0.05 * h], [0.25 * w, 0.25 * h], (n_o, 2))
    centres, sizes = np.concatenate([hc, oc]), np.concatenate([hs, os_])
    gt = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1)
    gt = np.clip(gt, 0, [w, h, w, h])
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 2)  # at least 2 px wide after clipping
    det = np.clip(gt + rng.normal(0, 0.02 * max(w, h), gt.shape), 0, [w, h, w, h])
    det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
    det[:, 2:] = np.minimum(det[:, 2:], [w, h])
    det[:, :2] = np.minimum(det[:, :2], det[:, 2:] - 1)
    num_objects = len(ls["objects"])
    labels = np.concatenate([np.full(n_h, ls["human"]),
                             rng.choice([o for o in range(num_objects) if o != ls["human"]], n_o)]).astype(np.int32)
    scores = rng.uniform(0.3, 1.0, n_h + n_o).astype(np.float32)
    ph, po = np.meshgrid(np.arange(n_h), n_h + np.arange(n_o), indexing="ij")
    ph, po = ph.ravel(), po.ravel()
    cdf = class_prob.cumsum(1)[labels[po]]  # inverse-CDF sampling, one draw per pair
    cls = np.minimum((rng.random(len(po))[:, None] > cdf).sum(1), class_prob.shape[1] - 1)
    return _Scene(size=(w, h), det=det.astype(np.float32), gt=gt.astype(np.float32), labels=labels, scores=scores,
                  pair_h=ph, pair_o=po, pair_class=cls)


def _concat(parts: list[np.ndarray], empty_shape: tuple, dtype) -> np.ndarray:
    """The parts concatenated as ``dtype``; zeros of ``empty_shape`` when there are none
    (``np.concatenate`` refuses an empty list)."""
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def _cells(boxes: np.ndarray, sizes: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """int64 [K, 4] grid-cell ranges (x0, y0, x1, y1; x1, y1 exclusive, at least one cell)
    that pixel boxes [K, 4] cover on a grid squashed onto images of sizes [K, 2]."""
    gh, gw = grid
    sx, sy = gw / sizes[:, 0], gh / sizes[:, 1]
    x0 = np.clip(np.floor(boxes[:, 0] * sx), 0, gw - 1)
    y0 = np.clip(np.floor(boxes[:, 1] * sy), 0, gh - 1)
    x1 = np.clip(np.ceil(boxes[:, 2] * sx), x0 + 1, gw)
    y1 = np.clip(np.ceil(boxes[:, 3] * sy), y0 + 1, gh)
    return np.stack([x0, y0, x1, y1], 1).astype(np.int64)


def _prefix_sums(a: np.ndarray) -> np.ndarray:
    """In place: cumulative sums of a [n, h, w, D] over axes 1 and 2 (a summed-area table).

    A loop of whole-slice additions over the short grid axes: contiguous, and several times
    faster than ``np.cumsum`` along a middle axis."""
    for y in range(1, a.shape[1]):
        a[:, y] += a[:, y - 1]
    for x in range(1, a.shape[2]):
        a[:, :, x] += a[:, :, x - 1]
    return a


def _scatter_add(target: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """target[index] += values [K, D], repeated indices summed: in rounds of distinct indices
    (fancy ``+=`` is vectorised; ``np.add.at`` on rows is many times slower)."""
    order = np.argsort(index, kind="stable")
    idx = index[order]
    start = np.r_[True, idx[1:] != idx[:-1]] if len(idx) else np.zeros(0, bool)
    rank = np.arange(len(idx)) - np.maximum.accumulate(np.where(start, np.arange(len(idx)), 0))
    for r in range(int(rank.max(initial=-1)) + 1):
        rows = order[rank == r]
        target[index[rows]] += values[rows]


def _paint(n: int, grid, dim: int, image: np.ndarray, cells: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """float32 [n, H, W, D]: vectors [K, D] added on every cell of their cell ranges [K, 4] of
    images [K]: +v, -v, -v, +v at the corners of a difference array, then prefix sums."""
    gh, gw = grid
    diff = np.zeros((n, gh + 1, gw + 1, dim), np.float32)
    x0, y0, x1, y1 = cells.T
    corners = np.concatenate([(image * (gh + 1) + y) * (gw + 1) + x
                              for y, x in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))])
    _scatter_add(diff.reshape(-1, dim), corners, np.concatenate([vectors, -vectors, -vectors, vectors]))
    return _prefix_sums(diff)[:, :gh, :gw]


def _box_means(dense: np.ndarray, image: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """float32 [K, D]: mean of dense [n, H, W, D] over each cell range [K, 4] of images [K]."""
    n, gh, gw, d = dense.shape
    sat = np.zeros((n, gh + 1, gw + 1, d), np.float32)
    sat[:, 1:, 1:] = dense
    _prefix_sums(sat)
    x0, y0, x1, y1 = cells.T
    total = sat[image, y1, x1] - sat[image, y0, x1] - sat[image, y1, x0] + sat[image, y0, x0]
    return total / ((x1 - x0) * (y1 - y0))[:, None]


def make_synthetic_cache(path, num_images: int = 64, pairs_per_image: int = 6, num_classes: int | None = 24,
                         embed_dim: int = 32, grid: tuple[int, int] = (8, 8), seed: int = 0, with_gt: bool = True,
                         labelspace=None, *, split: str = "train", teacher_seed: int = 0,
                         images_per_shard: int = 256, image_chunk: int = 16, pair_chunk: int = 256,
                         workers: int = 1, levels=S.LEVELS) -> Path:
    """Write a complete synthetic cache at ``path`` (see the module docstring) and return its path.

    labelspace: a ``hoidata`` LabelSpace, a label-space dict, or None for
    :func:`synthetic_labelspace` (``num_classes`` classes). The dataset attributes record
    it (a built-in's name, else the dict) under ``labelspace``, where the trainer finds it.
    pairs_per_image: the mean; images vary around it, about 3% have no pair.
    levels: the levels the store holds (``("global",)``: no union arrays).
    """
    if labelspace is None:
        if not num_classes:
            raise ValueError("give num_classes or a labelspace")
        ls = synthetic_labelspace(num_classes)
        ls_attr = ls
    else:
        ls = labelspace if isinstance(labelspace, dict) else labelspace.to_dict()
        if num_classes and num_classes != len(ls["hoi"]):
            raise ValueError(f"num_classes={num_classes} but the label space has {len(ls['hoi'])} classes; "
                             "pass num_classes=None")
        from hoidata.labelspace import BUILTIN
        ls_attr = ls["name"] if ls["name"] in BUILTIN else ls
    grid = (int(grid[0]), int(grid[1]))
    hoi = np.array(ls["hoi"], dtype=np.int64)
    num_classes, num_objects = len(hoi), len(ls["objects"])
    text, identity, shared = _teacher_world(ls, embed_dim, teacher_seed)

    # class prior per object: the long tail of train_counts, within the object's classes
    class_prob = np.zeros((num_objects, num_classes))
    class_prob[hoi[:, 1], np.arange(num_classes)] = np.asarray(ls["train_counts"], float)
    empty = class_prob.sum(1) == 0
    class_prob[empty, 0] = 1.0  # objects without a class never get a pair class drawn from here
    class_prob /= class_prob.sum(1, keepdims=True)
    no_class = np.flatnonzero(empty)

    rng = np.random.default_rng([seed, 1])
    scenes = []
    for _ in range(num_images):
        s = _scene(rng, ls, pairs_per_image, class_prob)
        if len(no_class):  # drop pairs whose object has no HOI class (e.g. 'person' as object)
            s = s.keep_pairs(~np.isin(s.labels[s.pair_o], no_class))
        scenes.append(s)

    counts = np.array([len(s.pair_h) for s in scenes], dtype=np.int64)
    lay = plan(counts, images_per_shard, image_chunk, pair_chunk)
    det_counts = np.array([len(s.det) for s in scenes], dtype=np.int64)
    det_off = ragged.offsets(det_counts)
    sizes = np.array([s.size for s in scenes], dtype=np.int32).reshape(-1, 2)

    R = lay.num_pair_rows
    pair_image = np.full(R, -1, np.int32)
    pair_h, pair_o = np.zeros(R, np.int64), np.zeros(R, np.int64)
    pair_box = np.zeros((R, 4), np.float32)
    pair_cls = np.zeros(R, np.int64)
    for i, s in enumerate(scenes):
        b, e = lay.pair_begin[i], lay.pair_end[i]
        h_box, o_box = s.det[s.pair_h], s.det[s.pair_o]
        pair_image[b:e] = i
        pair_h[b:e], pair_o[b:e] = det_off[i] + s.pair_h, det_off[i] + s.pair_o
        pair_box[b:e] = np.concatenate([np.minimum(h_box[:, :2], o_box[:, :2]),
                                        np.maximum(h_box[:, 2:], o_box[:, 2:])], 1)
        pair_cls[b:e] = s.pair_class

    det_box = _concat([s.det for s in scenes], (0, 4), np.float32)
    det_label = _concat([s.labels for s in scenes], (0,), np.int32)
    det_score = _concat([s.scores for s in scenes], (0,), np.float32)

    # ground truth: every pair with its hidden class (none at all without with_gt)
    gt_scenes = scenes if with_gt else []
    gt_off = ragged.offsets([len(s.pair_class) if with_gt else 0 for s in scenes])
    gt_box_h = _concat([s.gt[s.pair_h] for s in gt_scenes], (0, 4), np.float32)
    gt_box_o = _concat([s.gt[s.pair_o] for s in gt_scenes], (0, 4), np.float32)
    gt_hoi = _concat([s.pair_class for s in gt_scenes], (0,), np.int32)

    layout = lay.record(num_classes=num_classes, embed_dim=embed_dim, grid=grid, num_detections=det_off[-1],
                        num_gt=gt_off[-1])
    prompts_hash = hashlib.sha256(json.dumps(ls["prompts"]).encode()).hexdigest()
    teacher = {"model": "synthetic", "teacher_seed": teacher_seed, "embed_dim": embed_dim, "grid": list(grid),
               "crop_mode": "squash", "union_margin": 0.0, "prompts_sha256": prompts_hash}
    dataset = {"name": "synthetic", "split": split, "seed": seed, "labelspace": ls_attr}
    pair_rule = {"rule": "every human x every object", "min_score": 0.0}
    store = create(path, teacher=teacher, pair_rule=pair_rule, dataset=dataset, layout=layout,
                   levels=levels, overwrite=True)

    names = np.array([f"synthetic_{split}_{i:08d}.png" for i in range(num_images)], dtype=str)
    store.write_prepared({
        "text/embedding": text, "text/verb": hoi[:, 0].astype(np.int32), "text/object": hoi[:, 1].astype(np.int32),
        "text/name": np.array([f"{ls['verbs'][v]} {ls['objects'][o]}" for v, o in hoi], dtype=str),
        "images/file_name": names, "images/size": sizes,
        "detections/offsets": det_off, "detections/box": det_box, "detections/score": det_score,
        "detections/label": det_label,
        "pairs/begin": lay.pair_begin, "pairs/end": lay.pair_end, "pairs/image": pair_image,
        "pairs/human": pair_h, "pairs/object": pair_o, "pairs/box": pair_box,
        "gt/offsets": gt_off, "gt/box_h": gt_box_h, "gt/box_o": gt_box_o,
        "gt/hoi": gt_hoi, "gt/verb": hoi[gt_hoi, 0].astype(np.int32), "gt/object": hoi[gt_hoi, 1].astype(np.int32),
    })

    def write_shard(k: int) -> None:
        i0, i1 = lay.shard_images(k)
        r0, r1 = lay.shard_pair_rows(k)
        n = i1 - i0
        srng = np.random.default_rng([seed, 2, k])
        rows = np.flatnonzero(pair_image[r0:r1] >= 0) + r0
        img = (pair_image[rows] - i0).astype(np.int64)
        dets = np.arange(det_off[i0], det_off[i1])
        det_img = ragged.owners(det_counts[i0:i1])
        dense = srng.standard_normal((n, *grid, embed_dim), dtype=np.float32) * (NOISE / np.sqrt(embed_dim))
        dense += _paint(n, grid, embed_dim, det_img, _cells(det_box[dets], sizes[i0 + det_img], grid),
                        identity[det_label[dets]])
        mid = (det_box[pair_h[rows]] + det_box[pair_o[rows]]) / 2
        mid = (mid[:, :2] + mid[:, 2:]) / 2  # midpoint of the human and object centres
        mid_cells = _cells(np.concatenate([mid, mid], 1), sizes[i0 + img], grid)
        patch = np.clip(mid_cells[:, :2, None] + np.array([-1, 2]), 0, [[grid[1]], [grid[0]]])  # 3 x 3 around it
        dense += _paint(n, grid, embed_dim, img, np.stack([patch[:, 0, 0], patch[:, 1, 0], patch[:, 0, 1],
                                                           patch[:, 1, 1]], 1), CLASS_STRENGTH * text[pair_cls[rows]])
        jitter = srng.standard_normal((n, embed_dim), dtype=np.float32) * 0.01
        g_emb = _unit(dense.mean((1, 2)) + SHARED * shared + jitter)
        u_emb = np.zeros((r1 - r0, embed_dim), np.float32)
        u_mean = _box_means(dense, img, _cells(pair_box[rows], sizes[i0 + img], grid))
        u_emb[rows - r0] = _unit(u_mean + SHARED * shared + srng.standard_normal(u_mean.shape, dtype=np.float32) * 0.01)
        out = {"images/status": np.full(n, S.STATUS_OK, np.int8),
               "global/embedding": g_emb.astype(np.float16), "global/score": (g_emb @ text.T).astype(np.float16),
               "global/dense": dense.astype(np.float16)}
        if S.UNION in store.levels:
            out["union/embedding"] = u_emb.astype(np.float16)
            out["union/score"] = (u_emb @ text.T).astype(np.float16)
        store.write_shard(k, out)
        store.mark_shard_done(k)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(write_shard, range(lay.num_shards)))
    return finalize(store)
