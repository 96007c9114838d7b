"""``hoi cache verify``: read every chunk of every array of a store and check what can be checked.

Reading every chunk checks every crc32c (a flipped byte anywhere is found); the chunk
listing finds lost chunks; the values are then checked against each other:

- completion: every shard done, prepared, no image pending in a done shard, known status codes;
- text: unit embeddings, classes' verbs and objects in the label space;
- images: sizes positive (or -1, unknown), file names present and unique;
- detections: CSR offsets, boxes finite with positive area inside their image, labels in range;
- pairs: ranges per image agree with ``pairs/image`` and stay in the image's shard, the human
  and object are detections of the image (the human a person), the union box is theirs;
- ground truth: CSR offsets, classes in range with their verb and object, boxes inside their
  image (2 px of slack: annotation boxes are stored as given, and a box drawn to the edge may
  end a pixel or two past it);
- each level held: written embeddings unit length (a lost chunk reads back as zeros),
  scores equal embedding x text, every value finite (the dense map included).

Big arrays are read chunk-aligned block by block (a split's dense map does not fit in
memory); prepare-time arrays are read whole, as their readers do.
"""

from __future__ import annotations

import numpy as np

from hoidata import ragged

from . import schema as S
from .errors import ChunkMisplaced

BLOCK_BYTES = 64 << 20   # per array read at once
# What float16 storage allows, no more. A unit vector rounded to float16 (relative error
# u = 2**-11 a component) has norm 1 +- u; a score computed in float32 from the unrounded
# embedding and text, then rounded, differs from the stored embedding x stored text by at
# most u + u (Cauchy-Schwarz) + u/2 (its own rounding) = 1.2e-3. Measured on the bundled
# benchmark's caches: 1.4e-4 and 3.0e-4. (The old 2e-2 let 2 logits at temperature 0.01 pass.)
UNIT_TOL, SCORE_TOL = 1e-3, 1.5e-3
GT_SLACK = 2.0            # pixels a ground-truth box may reach past its image: stored as given, not clipped


class _Reader:
    """Chunk-aligned blocks of an array; damaged chunks are recorded, their blocks skipped."""

    def __init__(self, cache):
        self.cache = cache
        self.damaged: dict[tuple[str, str], list[int]] = {}  # (array, "damaged" | "misplaced") -> chunks

    def step(self, *names: str) -> int:
        """Rows per block for reading ``names`` side by side (they share their first-axis chunk)."""
        arrs = [self.cache.array(n) for n in names]
        row = max(int(np.prod(a.shape[1:], dtype=np.int64)) * (a.dtype.itemsize if a.dtype.kind not in "TUO" else 64)
                  for a in arrs)
        chunk = arrs[0].chunks[0]
        return chunk * max(1, BLOCK_BYTES // max(1, row * chunk))

    def block(self, name: str, a: int, b: int) -> np.ndarray | None:
        """Rows [a, b) (chunk-aligned), or None when a chunk among them is damaged."""
        arr = self.cache.array(name)
        try:
            return np.asarray(arr[a:b])
        except Exception:
            c = arr.chunks[0]
            why = {i: self.cache.chunk_error(name, i) for i in range(a // c, -(-b // c))}
            bad = [i for i, w in why.items() if w]
            if not bad:
                raise  # not the data's fault
            for i in bad:
                kind = "misplaced" if why[i].startswith(ChunkMisplaced.__name__) else "damaged"
                self.damaged.setdefault((name, kind), []).append(i)
            return None

    def whole(self, name: str) -> np.ndarray | None:
        n, step = self.cache.array(name).shape[0], self.step(name)
        parts = [self.block(name, a, min(n, a + step)) for a in range(0, n, step)] or [self.cache.read(name)]
        return None if any(p is None for p in parts) else (np.concatenate(parts) if len(parts) > 1 else parts[0])

    def problems(self) -> list[str]:
        out = []
        for (name, kind), bad in self.damaged.items():
            key = S.chunk_key(name, bad[0], len(S.ARRAYS[name].dims))
            why = ("checksum or decoding" if kind == "damaged"
                   else "their bytes are not those recorded under their key: moved, restored or synced wrongly")
            out.append(f"{name}: {len(bad)} {kind} chunk(s) ({why}), first {key} ({self.cache._rows_of(name, key)})")
        return out


def verify(cache) -> list[str]:
    """Problems found in ``cache`` (a TeacherCache), empty when complete and consistent."""
    problems = [f"{name}: {len(keys)} chunk file(s) missing that the layout says were written (first: {keys[0]})"
                for name, keys in cache.missing_chunks().items()]
    stray = cache.stray_files()
    if stray:
        problems.append(f"{len(stray)} file(s) the schema does not own (left by an interrupted write?): "
                        f"{', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}")
    if cache.complete and not cache.placement_checked:
        problems.append(f"chunk placement cannot be checked: the store has no {S.CHUNK_CRC} record (made by an "
                        "earlier version); a chunk under the wrong key would read as good: rebuild it to check")
    reader = _Reader(cache)
    small = [n for n in cache.array_names if not n.startswith(("global/", "union/"))]
    a = {name: reader.whole(name) for name in small}
    ls = _labelspace(cache)
    if ls is None:
        src = cache.dataset.labelspace
        src = src.get("name") if isinstance(src, dict) else src
        problems.append(f"the store's label space {src!r} cannot be resolved here: "
                        "the checks of classes against their verbs and objects did not run")
    for check in (_completion, _text, _images, _detections, _pairs, _ground_truth):
        problems += check(cache, a, ls)
    problems += _global_level(cache, a, reader)
    if S.UNION in cache.levels:
        problems += _union_level(cache, a, reader)
    return reader.problems() + problems


def _have(a: dict, *names: str) -> bool:
    """Whether every array named read back whole (a damaged one is reported once, not checked)."""
    return all(a.get(n) is not None for n in names)


def _labelspace(cache):
    """The store's label space, or None when it cannot be resolved here (checks needing it skip)."""
    from hoidata.labelspace import LabelSpace

    src = cache.dataset.labelspace
    try:
        return LabelSpace.from_dict(src) if isinstance(src, dict) else LabelSpace.load(src)
    except (ValueError, OSError, TypeError, KeyError):
        return None


def _csr(offsets: np.ndarray, total: int, name: str) -> list[str]:
    if offsets[0] != 0 or offsets[-1] != total or np.any(np.diff(offsets) < 0):
        return [f"{name} is not a valid CSR index"]
    return []


def _completion(cache, a: dict, ls) -> list[str]:
    problems = []
    if not cache.attrs.get("prepared"):
        problems.append("prepare-time arrays were never completed")
    if not _have(a, "images/shard_done", "images/status"):
        return problems
    done, status = a["images/shard_done"], a["images/status"]
    if not done.all():
        problems.append(f"{int((~done).sum())} of {len(done)} shards not done: {np.flatnonzero(~done)[:10].tolist()}")
    if not np.isin(status, (S.STATUS_PENDING, S.STATUS_OK, S.STATUS_SKIPPED)).all():
        problems.append("images/status holds unknown codes")
    in_done = done[np.arange(cache.num_images) // cache.layout.images_per_shard]
    pending = in_done & (status == S.STATUS_PENDING)
    if pending.any():
        problems.append(f"{int(pending.sum())} images still pending in done shards (first: image "
                        f"{int(np.flatnonzero(pending)[0])})")
    return problems


def _text(cache, a: dict, ls) -> list[str]:
    problems = []
    if _have(a, "text/embedding"):
        text = a["text/embedding"]
        if not np.isfinite(text).all() or not np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-3):
            problems.append("text/embedding rows are not unit length")
    if ls is not None and _have(a, "text/verb", "text/object"):
        if not (np.array_equal(a["text/verb"], ls.hoi_verb) and np.array_equal(a["text/object"], ls.hoi_object)):
            problems.append("text/verb or text/object disagrees with the label space's classes")
    if _have(a, "text/name") and any(not str(n) for n in a["text/name"]):
        problems.append("text/name has empty class names")
    return problems


def _images(cache, a: dict, ls) -> list[str]:
    problems = []
    if _have(a, "images/size") and not ((a["images/size"] > 0) | (a["images/size"] == -1)).all():
        problems.append("images/size holds sizes that are neither positive nor -1 (unknown)")
    if _have(a, "images/file_name"):
        names = a["images/file_name"]
        if any(not str(n) for n in names) or len(set(names.tolist())) != len(names):
            problems.append("images/file_name has empty or repeated names")
    return problems


def _outside(box: np.ndarray, wh: np.ndarray, slack: float = 0.0, strict: bool = True) -> np.ndarray:
    """bool [K]: boxes [K, 4] (coord) not finite, inverted (empty, if ``strict``) or reaching out of
    their image (w, h) [K, 2] by more than ``slack``; images of unknown size (-1) count only the first two."""
    finite = np.isfinite(box).all(1)
    empty = (box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1]) if strict else \
        (box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1])
    known = (wh > 0).all(1)
    out = (box[:, 0] < -slack) | (box[:, 1] < -slack) | (box[:, 2] > wh[:, 0] + slack) | (box[:, 3] > wh[:, 1] + slack)
    return ~finite | empty | (known & out)


def _detections(cache, a: dict, ls) -> list[str]:
    if not _have(a, "detections/offsets"):
        return []
    offs = a["detections/offsets"]
    problems = _csr(offs, cache.layout.num_detections, "detections/offsets")
    if problems or not _have(a, "images/size", "detections/box"):
        return problems
    img = ragged.owners(np.diff(offs))
    bad = _outside(a["detections/box"], a["images/size"][img])
    if bad.any():
        problems.append(f"detections/box: {int(bad.sum())} box(es) empty or outside their image (first: detection "
                        f"{int(np.flatnonzero(bad)[0])} of image {int(img[bad][0])})")
    if _have(a, "detections/score") and not np.isfinite(a["detections/score"]).all():
        problems.append("detections/score has non-finite values")
    if ls is not None and _have(a, "detections/label"):
        lab = a["detections/label"]
        if len(lab) and (lab.min() < 0 or lab.max() >= ls.num_objects):
            problems.append("detections/label holds an object out of range")
    return problems


def _pairs(cache, a: dict, ls) -> list[str]:
    if not _have(a, "pairs/begin", "pairs/end", "pairs/image"):
        return []
    problems = []
    begin, end, image = a["pairs/begin"], a["pairs/end"], a["pairs/image"]
    expect = np.full(len(image), -1, np.int64)
    for i in np.flatnonzero(end > begin):
        expect[begin[i]:end[i]] = i
    if not np.array_equal(expect, image):
        problems.append("pairs/image disagrees with pairs/begin and pairs/end")
    if len(begin) > 1 and np.any(begin[1:] < end[:-1]):
        problems.append("pairs/begin and pairs/end ranges of images overlap")
    rows = np.asarray(cache.layout.shard_rows)
    shard = np.arange(cache.num_images) // cache.layout.images_per_shard
    if len(begin) and np.any((begin < rows[shard]) | (end > rows[shard + 1]) | (end < begin)):
        problems.append("pairs/begin and pairs/end leave their image's shard")
    if problems or not _have(a, "detections/offsets", "pairs/human", "pairs/object"):
        return problems
    valid = image >= 0
    img, offs = image[valid], a["detections/offsets"]
    det = {}
    for role in ("human", "object"):
        det[role] = a[f"pairs/{role}"][valid]
        if np.any((det[role] < offs[img]) | (det[role] >= offs[img + 1])):
            problems.append(f"pairs/{role} names a detection outside its image")
    if problems:
        return problems
    if ls is not None and _have(a, "detections/label") and np.any(a["detections/label"][det["human"]] != ls.human):
        problems.append("pairs/human names a detection that is not a person")
    if _have(a, "pairs/box", "detections/box"):
        box, dbox = a["pairs/box"][valid], a["detections/box"]
        union = np.concatenate([np.minimum(dbox[det["human"], :2], dbox[det["object"], :2]),
                                np.maximum(dbox[det["human"], 2:], dbox[det["object"], 2:])], 1)
        bad = ~(box == union).all(1)
        if _have(a, "images/size"):
            bad |= _outside(box, a["images/size"][img])
        if bad.any():
            problems.append(f"pairs/box: {int(bad.sum())} union box(es) outside their image or not the union of "
                            f"their pair's boxes (first: pair row {int(np.flatnonzero(valid)[bad][0])})")
    return problems


def _ground_truth(cache, a: dict, ls) -> list[str]:
    if not _have(a, "gt/offsets", "gt/hoi"):
        return []
    g, hoi = a["gt/offsets"], a["gt/hoi"]
    problems = _csr(g, len(hoi), "gt/offsets")
    if len(hoi) and (hoi.min() < 0 or hoi.max() >= cache.layout.num_classes):
        problems.append("gt/hoi holds a class out of range")
    if problems:
        return problems
    if _have(a, "text/verb", "text/object", "gt/verb", "gt/object") and len(hoi) and not (
            np.array_equal(a["gt/verb"], a["text/verb"][hoi])
            and np.array_equal(a["gt/object"], a["text/object"][hoi])):
        problems.append("gt/verb or gt/object disagrees with the class in gt/hoi")
    if _have(a, "images/size"):
        img = ragged.owners(np.diff(g))
        for name in ("gt/box_h", "gt/box_o"):
            if _have(a, name):
                bad = _outside(a[name], a["images/size"][img], slack=GT_SLACK, strict=False)
                if bad.any():
                    problems.append(f"{name}: {int(bad.sum())} box(es) inverted or outside their image (first: pair "
                                    f"{int(np.flatnonzero(bad)[0])} of image {int(img[bad][0])})")
    return problems


def _written_rows(cache, a: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """bool [N] images and bool [R] pair rows whose level outputs were written (status OK)."""
    if not _have(a, "images/status", "pairs/image"):
        return None
    ok, image = a["images/status"] == S.STATUS_OK, a["pairs/image"]
    return ok, (image >= 0) & (ok[np.clip(image, 0, None)] if len(image) else image >= 0)


def _global_level(cache, a: dict, reader: _Reader) -> list[str]:
    rows = _written_rows(cache, a)
    problems = _level(cache, "global", rows[0] if rows else None, a.get("text/embedding"), reader)
    step = reader.step("global/dense")
    for lo in range(0, cache.num_images, step):  # block by block: a split's map does not fit in memory
        dense = reader.block("global/dense", lo, min(cache.num_images, lo + step))
        if dense is not None and rows is not None and not np.isfinite(dense[rows[0][lo:lo + step]]).all():
            problems.append(f"global/dense has non-finite values (images {lo}..{lo + len(dense) - 1})")
            break
    return problems


def _union_level(cache, a: dict, reader: _Reader) -> list[str]:
    rows = _written_rows(cache, a)
    return _level(cache, "union", rows[1] if rows else None, a.get("text/embedding"), reader)


def _level(cache, level: str, rows: np.ndarray | None, text: np.ndarray | None, reader: _Reader) -> list[str]:
    """Written rows are unit embeddings whose scores are their cosines with the text: a lost
    chunk reads back as zeros, a damaged one as other numbers. Every chunk is read even when
    the rows cannot be judged (a damaged status or text array)."""
    emb_name, score_name = f"{level}/embedding", f"{level}/score"
    n, step = cache.array(emb_name).shape[0], reader.step(emb_name, score_name)
    text = None if text is None else text.astype(np.float32)
    not_unit, worst, problems = [], 0.0, []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        emb, score = reader.block(emb_name, lo, hi), reader.block(score_name, lo, hi)
        if emb is None or score is None or rows is None:
            continue
        sel = np.flatnonzero(rows[lo:hi])
        emb, score = emb[sel].astype(np.float32), score[sel].astype(np.float32)
        if not (np.isfinite(emb).all() and np.isfinite(score).all()):
            problems.append(f"{level} embeddings or scores have non-finite values (rows {lo}..{hi - 1})")
            continue
        bad = np.abs(np.linalg.norm(emb, axis=1) - 1) > UNIT_TOL
        not_unit += (lo + sel[bad]).tolist()
        if text is not None and len(sel):
            worst = max(worst, float(np.abs(emb @ text.T - score).max()))
    if not_unit:
        problems.append(f"{emb_name}: {len(not_unit)} written row(s) are not unit length "
                        f"(first: row {not_unit[0]}); lost or damaged chunks?")
    if worst > SCORE_TOL:
        problems.append(f"{score_name} differs from embedding x text by up to {worst:.3f}")
    return problems
