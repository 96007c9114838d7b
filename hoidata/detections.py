"""Object detections from an off-the-shelf detector: one in-memory form, one file format.

The zero-shot setting pairs boxes from a COCO detector, so the detections decide much of
the final score (a score threshold alone moves mAP by more than a point). That is why the
detector's name, weights, score threshold and NMS settings travel with the boxes, in
``attrs``, from the import to the cache.

In memory (:class:`Detections`) a split is flat arrays in CSR layout, boxes in the
``coord`` convention (continuous xyxy, see :mod:`hoidata.boxes`)::

    file_names  [N] str
    sizes       int64 [N, 2]      (width, height); -1 where unknown
    offsets     int64 [N + 1]     detections of image i are rows offsets[i]:offsets[i+1]
    boxes       float32 [D, 4]    coord xyxy
    scores      float32 [D]       descending within each image
    labels      int64 [D]         object index, in the label space's object order
    attrs       dict              provenance (detector, weights, score_threshold, nms, ...)

On disk: one HDF5 file (:func:`save_detections`, :func:`load_detections`), schema
``hoi-detections/1``: datasets ``boxes`` float32 [D, 4], ``scores`` float32 [D],
``labels`` int16/int32 [D], ``offsets`` int64 [N + 1], ``file_names`` utf-8 [N],
``sizes`` int32 [N, 2]; every ``attrs`` key is a root attribute (non-scalar values
JSON-encoded, their keys listed in the ``json_attrs`` attribute).

Importers: :func:`import_coco_results` (a COCO results JSON, as detectron2, mmdetection
and the torchvision references write it) and :func:`import_per_image_folder` (one JSON per
image, as UPT keeps them). Both clip boxes to the image, drop zero-area boxes, drop
classes without a dataset object, and sort each image's detections by descending score.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Callable, Sequence

import numpy as np

from hoicore import __version__
from hoicore.errors import HoiError
from hoicore.files import UnsafeNameError, atomic_write, inside, load_json

from . import boxes as B
from . import ragged
from .annotations import Annotations
from .labelspace import LabelSpace

log = logging.getLogger(__name__)

SCHEMA = "hoi-detections/1"
_DATASETS = ("boxes", "scores", "labels", "offsets", "file_names", "sizes")
_RESERVED_ATTRS = ("schema", "json_attrs", "content_sha256")

# One image of an image list: (image_id, file_name, width, height).
ImageRecord = tuple


class DetectionsError(HoiError, ValueError):
    """Malformed detections; the message names the file and, where relevant, the image."""


# -- in memory ----------------------------------------------------------------------------

@dataclass(eq=False)
class Detections:
    """Detections of one split in CSR layout (shapes and dtypes in the module docstring).

    Construction coerces dtypes and validates (shapes, offsets, finite values, box corners,
    unique file names); a violation raises :class:`DetectionsError`.
    """

    file_names: list[str]
    sizes: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        self.file_names = [str(f) for f in self.file_names]
        self.sizes = np.asarray(self.sizes, dtype=np.int64)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        if self.boxes.size == 0:  # [] or [[]] from an empty list: no detections at all
            self.boxes = self.boxes.reshape(0, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.attrs = dict(self.attrs)
        self.validate()

    def validate(self, where: str | None = None, num_objects: int | None = None) -> None:
        """Raise :class:`DetectionsError` (prefixed with ``where``) on any inconsistency.

        ``num_objects``: also check labels < num_objects (the label space's object count).
        """
        def bad(msg: str):
            raise DetectionsError(f"{where}: {msg}" if where else msg)

        n, d = len(self.file_names), len(self.boxes)
        if self.sizes.shape != (n, 2):
            bad(f"sizes has shape {self.sizes.shape}, expected ({n}, 2) for {n} images")
        if self.offsets.shape != (n + 1,):
            bad(f"offsets has shape {self.offsets.shape}, expected ({n + 1},) for {n} images")
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            bad(f"boxes has shape {self.boxes.shape}, expected (D, 4)")
        for key in ("scores", "labels"):
            if getattr(self, key).shape != (d,):
                bad(f"{key} has shape {getattr(self, key).shape}, expected ({d},) for {d} boxes")
        if self.offsets[0] != 0 or self.offsets[-1] != d:
            bad(f"offsets run from {self.offsets[0]} to {self.offsets[-1]}, expected 0 to {d} (the number of boxes)")
        dec = np.flatnonzero(np.diff(self.offsets) < 0)
        if len(dec):
            bad(f"image {self.file_names[dec[0]]}: offsets decrease (not a CSR layout)")
        if len(set(self.file_names)) != n:
            seen = set()
            dup = next(f for f in self.file_names if f in seen or seen.add(f))
            bad(f"image {dup} appears more than once")

        def at(row: int) -> str:  # "image NAME, detection k" of a flat row
            i = int(np.searchsorted(self.offsets, row, side="right") - 1)
            return f"image {self.file_names[i]}, detection {row - self.offsets[i]}"

        checks = [
            (~np.isfinite(self.boxes).all(axis=1), "box is not finite"),
            (~np.isfinite(self.scores), "score is not finite"),
            ((self.boxes[:, 2] < self.boxes[:, 0]) | (self.boxes[:, 3] < self.boxes[:, 1]),
             "box has x2 < x1 or y2 < y1"),
            (self.labels < 0, "label is negative"),
        ]
        if num_objects is not None:
            checks.append((self.labels >= num_objects,
                           f"label is not below {num_objects} (objects in the label space)"))
        for mask, msg in checks:
            rows = np.flatnonzero(mask)
            if len(rows):
                r = int(rows[0])
                bad(f"{at(r)}: {msg} (box {self.boxes[r].tolist()}, score {self.scores[r]}, label {self.labels[r]})")

    def __len__(self) -> int:
        return len(self.file_names)

    @property
    def num_detections(self) -> int:
        return len(self.scores)

    @property
    def counts(self) -> np.ndarray:
        """int64 [N]: detections per image."""
        return np.diff(self.offsets)

    @property
    def image_of_detection(self) -> np.ndarray:
        """int64 [D]: image index of each detection."""
        return ragged.owners(self.counts)

    def of(self, i: int) -> dict[str, np.ndarray]:
        """Views of image ``i``: boxes float32 [k, 4], scores float32 [k], labels int64 [k]."""
        s = slice(self.offsets[i], self.offsets[i + 1])
        return {"boxes": self.boxes[s], "scores": self.scores[s], "labels": self.labels[s]}

    def image_index(self) -> dict[str, int]:
        """File name -> image index."""
        return {f: i for i, f in enumerate(self.file_names)}

    def subset(self, indices) -> "Detections":
        """The images ``indices`` (int array, in that order) with their detections; attrs copied."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        counts = self.counts[idx]
        offsets = ragged.offsets(counts)
        rows = ragged.ranges(self.offsets[:-1][idx], counts)
        return Detections([self.file_names[i] for i in idx], self.sizes[idx], offsets,
                          self.boxes[rows], self.scores[rows], self.labels[rows], copy.deepcopy(self.attrs))

    def equals(self, other: "Detections") -> bool:
        """Same images, arrays (values and dtypes) and attrs."""
        return (self.file_names == other.file_names and self.attrs == other.attrs and all(
            getattr(self, k).dtype == getattr(other, k).dtype and np.array_equal(getattr(self, k), getattr(other, k))
            for k in ("sizes", "offsets", "boxes", "scores", "labels")))


# -- HDF5 ---------------------------------------------------------------------------------

def save_detections(dets: Detections, path: str | Path) -> None:
    """Write ``dets`` to ``path`` (HDF5, schema ``hoi-detections/1``), atomically.

    The file is written under a temporary name in the same folder and renamed over
    ``path`` only when complete, so a crash never leaves a half-written file (or a
    damaged previous version) under the final name.
    """
    import h5py

    path = Path(path)
    dets.validate(str(path))
    bad_keys = [k for k in dets.attrs if k in _RESERVED_ATTRS or k in _DATASETS]
    if bad_keys:
        raise DetectionsError(f"{path}: attrs may not use the reserved name(s) {', '.join(bad_keys)}")
    with atomic_write(path) as tmp, h5py.File(tmp, "x") as f:
        _write_h5(f, dets)


def _write_h5(f, dets: Detections) -> None:
    import h5py

    labels_dtype = np.int16 if dets.labels.size == 0 or dets.labels.max() < 2 ** 15 else np.int32
    arrays = {"boxes": dets.boxes.astype(np.float32), "scores": dets.scores.astype(np.float32),
              "labels": dets.labels.astype(labels_dtype), "offsets": dets.offsets.astype(np.int64),
              "sizes": dets.sizes.astype(np.int32).reshape(-1, 2)}
    for name, value in arrays.items():
        f.create_dataset(name, data=value)
    f.create_dataset("file_names", data=np.array(dets.file_names, dtype=object).reshape(-1),
                     dtype=h5py.string_dtype("utf-8"))
    f.attrs["schema"] = SCHEMA
    f.attrs["content_sha256"] = _content_hash(arrays, dets.file_names)
    json_keys = []
    for key, value in dets.attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (str, bool, float)) or (isinstance(value, int) and -2 ** 63 <= value < 2 ** 63):
            f.attrs[key] = value
        else:  # lists, dicts, None: HDF5 attributes have no such types
            f.attrs[key] = json.dumps(value)
            json_keys.append(key)
    f.attrs["json_attrs"] = json.dumps(json_keys)


def _content_hash(arrays: dict[str, np.ndarray], file_names) -> str:
    """sha256 over every dataset as stored (dtype, shape, bytes) and the file names: a flipped
    byte anywhere (a box, a score) changes it. HDF5 itself checks nothing by default."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    h.update("\n".join(file_names).encode("utf-8"))
    return h.hexdigest()


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def _check_self_contained(f, name: str, path: Path) -> None:
    """Refuse a dataset whose bytes live outside the file: a soft or external link, external
    storage or a virtual dataset (a crafted file would pull other files' bytes into a cache)."""
    import h5py

    link = f.get(name, getlink=True)
    ds = f[name] if isinstance(link, h5py.HardLink) else None
    if ds is None or not isinstance(ds, h5py.Dataset) or ds.is_virtual or ds.external:
        what = type(link).__name__ if ds is None else "virtual dataset" if ds.is_virtual else "external storage"
        raise DetectionsError(f"{path}: dataset {name!r} is a {what}, not data inside the file; detections files "
                              "hold their own data (write it again with hoi detections import / run)")


def load_detections(path: str | Path, labelspace: LabelSpace | None = None) -> Detections:
    """Read and validate a detections file written by :func:`save_detections`.

    With ``labelspace``: the file must have been made for the same label space (its
    fingerprint), and every label must be one of its objects.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DetectionsError(f"{path}: no such detections file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DetectionsError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        schema = _attr_value(f.attrs.get("schema"))
        if schema != SCHEMA:
            raise DetectionsError(f"{path}: schema is {schema!r}, expected {SCHEMA!r} "
                                  f"(not a detections file, or one from a newer version)")
        missing = [k for k in _DATASETS if k not in f]
        if missing:
            raise DetectionsError(f"{path}: missing dataset(s) {', '.join(missing)}")
        for k in _DATASETS:
            _check_self_contained(f, k, path)
        arrays = {k: f[k][()] for k in _DATASETS if k != "file_names"}
        file_names = list(f["file_names"].asstr()[()])
        recorded = _attr_value(f.attrs.get("content_sha256"))
        try:
            json_keys = set(json.loads(_attr_value(f.attrs.get("json_attrs", "[]"))))
            attrs = {k: (json.loads(_attr_value(v)) if k in json_keys else _attr_value(v))
                     for k, v in f.attrs.items() if k not in _RESERVED_ATTRS}
        except (json.JSONDecodeError, TypeError) as e:
            raise DetectionsError(f"{path}: an attribute is not valid JSON ({e})") from e
    if recorded is None:
        log.warning("%s: written by an earlier version, without a content hash: damage to it cannot be found "
                    "(write it again with hoi detections import / run)", path)
    elif recorded != _content_hash(arrays, file_names):
        raise DetectionsError(f"{path}: its contents differ from the hash recorded when it was written (the file "
                              "is damaged); restore it or write it again (hoi detections import / run)")
    try:
        dets = Detections(file_names, attrs=attrs, **arrays)
    except DetectionsError as e:
        raise DetectionsError(f"{path}: {e}") from None
    if labelspace is not None:
        fp = attrs.get("labelspace_fingerprint")
        if fp is None:
            log.warning("%s: no label-space fingerprint recorded; cannot confirm it matches %r", path, labelspace.name)
        elif fp != labelspace.fingerprint:
            raise DetectionsError(
                f"{path}: made for label space {attrs.get('labelspace', '?')!r} (fingerprint {str(fp)[:16]}), "
                f"not {labelspace.name!r} (fingerprint {labelspace.fingerprint[:16]})")
        dets.validate(str(path), num_objects=labelspace.num_objects)
    return dets


# -- image lists ----------------------------------------------------------------------------

def _load_json(path: Path, what: str):
    return load_json(path, DetectionsError, what)


def images_from_coco_info(path: str | Path) -> list[ImageRecord]:
    """(image_id, file_name, width, height) of each image of a COCO-style JSON ``{"images": [...]}``."""
    path = Path(path)
    d = _load_json(path, "image info")
    if not isinstance(d, dict) or not isinstance(d.get("images"), list):
        raise DetectionsError(f"{path}: expected a COCO-style object with an 'images' list")
    out = []
    for k, im in enumerate(d["images"]):
        try:
            out.append((im["id"], str(im["file_name"]), int(im["width"]), int(im["height"])))
        except (KeyError, TypeError, ValueError) as e:
            raise DetectionsError(f"{path}: images[{k}] lacks id, file_name, width or height ({e!r})") from e
    return out


_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def images_from_annotations(ann: Annotations, image_id: str = "filename") -> list[ImageRecord]:
    """(image_id, file_name, width, height) of each annotated image.

    ``image_id='index'``: the 0-based position in ``ann``; ``'filename'``: the last number
    in the file name (``HICO_test2015_00000123.jpg`` -> 123), the id COCO-style
    conversions of HICO-DET give.
    """
    if image_id == "index":
        ids = list(range(len(ann)))
    elif image_id == "filename":
        ids = []
        for name in ann.file_names:
            m = _LAST_NUMBER.search(PurePath(name).stem)
            if m is None:
                raise DetectionsError(f"image {name}: no number in the file name to use as image id")
            ids.append(int(m.group(1)))
    else:
        raise ValueError(f"image_id must be 'index' or 'filename', not {image_id!r}")
    return [(i, name, int(w), int(h)) for i, name, (w, h) in zip(ids, ann.file_names, ann.sizes.tolist())]


def load_image_list(spec: str | Path, labelspace: LabelSpace, image_id: str = "filename") -> list[ImageRecord]:
    """The image list named by ``spec``: ``'hico_det'`` (the bundled HICO-DET test set), a
    COCO-style image-info JSON (ids from the file), or an annotation file in either format
    (ids by ``image_id``, see :func:`images_from_annotations`)."""
    from .annotations import hico_test_annotations
    from .ground_truth import read_annotations

    if str(spec) == "hico_det":
        return images_from_annotations(hico_test_annotations(), image_id)
    path = Path(spec)
    d = _load_json(path, "image list")
    if isinstance(d, dict) and "images" in d:
        return images_from_coco_info(path)
    return images_from_annotations(read_annotations(path, labelspace), image_id)


def _image_table(images) -> tuple[list, list[str], np.ndarray]:
    """Normalise an image list (records or :class:`Annotations`) to ids, names, sizes int64 [N, 2]."""
    if isinstance(images, Annotations):
        images = images_from_annotations(images, "index")
    images = list(images)
    ids = [rec[0] for rec in images]
    names = [str(rec[1]) for rec in images]
    sizes = np.array([(rec[2], rec[3]) for rec in images], dtype=np.int64).reshape(-1, 2)
    if len(set(ids)) != len(ids):
        seen = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DetectionsError(f"the image list gives image id {dup!r} to two images")
    return ids, names, sizes


# -- importers ----------------------------------------------------------------------------

def import_coco_results(results_path: str | Path, images: Sequence[ImageRecord], labelspace: LabelSpace, *,
                        category_ids: str = "coco91", score_threshold: float = 0.0, detector: str = "",
                        weights: str = "", nms="", skip_unknown_images: bool = False,
                        attrs: dict | None = None) -> Detections:
    """Import a COCO results JSON ``[{image_id, category_id, bbox: [x, y, w, h], score}]``.

    ``images``: (image_id, file_name, width, height) per image, see
    :func:`images_from_coco_info` / :func:`images_from_annotations`. ``category_ids``:
    ``'coco91'`` (COCO category ids 1..90, what detectors write) or ``'coco80'`` (0-based
    index among the 80 classes). Results for an image id not in ``images`` are an error
    unless ``skip_unknown_images``. ``bbox`` is xywh in continuous pixel coordinates.
    ``detector``, ``weights``, ``nms`` and ``attrs`` are recorded as provenance.
    """
    results_path = Path(results_path)
    res = _load_json(results_path, "results")
    if not isinstance(res, list):
        raise DetectionsError(f"{results_path}: expected a list of detections (COCO results format)")
    ids, names, sizes = _image_table(images)
    n = len(res)
    try:  # fast path; on failure, find the entry to blame with a slow scan
        image_ids = [r["image_id"] for r in res]
        cats_f = np.fromiter((r["category_id"] for r in res), dtype=np.float64, count=n)
        scores = np.fromiter((r["score"] for r in res), dtype=np.float64, count=n)
        bbox = np.array([r["bbox"] for r in res], dtype=np.float64).reshape(n, 4)
        if np.any(cats_f != np.round(cats_f)):  # an int64 read would truncate 1.5 to 1
            raise ValueError
        cats = cats_f.astype(np.int64)
    except (KeyError, TypeError, ValueError):
        raise DetectionsError(f"{results_path}: {_first_malformed_entry(res)}") from None
    negative = (bbox[:, 2:] < 0).any(1)
    if negative.any():
        k = int(np.flatnonzero(negative)[0])
        raise DetectionsError(f"{results_path}: entry {k} (image id {image_ids[k]!r}): bbox {bbox[k].tolist()} has a "
                              "negative width or height; COCO results boxes are [x, y, w, h]")

    # Image ids -> positions, through the (few) distinct ids rather than per entry.
    uniq, inverse = np.unique(np.asarray(image_ids) if n else np.zeros(0, np.int64), return_inverse=True)
    lut = {i: k for k, i in enumerate(ids)}
    pos = np.array([lut.get(u, -1) for u in uniq.tolist()], dtype=np.int64)
    img = pos[inverse.reshape(-1)]
    unknown = img < 0
    if unknown.any():
        k = int(np.flatnonzero(unknown)[0])
        if not skip_unknown_images:
            # Ids off by one (0-based index vs. file-name number) are the usual cause: show the range.
            hint = f" (its ids run {min(ids)}..{max(ids)})" if ids and all(isinstance(i, int) for i in ids) else ""
            raise DetectionsError(f"{results_path}: entry {k}: image id {image_ids[k]!r} "
                                  f"is not in the image list{hint}")
        log.warning("%s: skipped %d detections of %d image ids not in the image list (first: %r)", results_path,
                    int(unknown.sum()), int((pos < 0).sum()), image_ids[k])
    rows = np.flatnonzero(~unknown)
    xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
    describe = lambda r: f"{results_path}: entry {rows[r]} (image {names[img[rows[r]]]})"  # noqa: E731
    stats = {"entries": n, "unknown_image": int(unknown.sum())}
    dets = _assemble(names, sizes, img[rows], xyxy[rows], scores[rows], cats[rows], category_ids, labelspace,
                     score_threshold, describe, stats)
    dets.attrs.update(_provenance(labelspace, results_path, detector, weights, nms, score_threshold,
                                  category_ids, stats, attrs))
    return dets


def _first_malformed_entry(res: list) -> str:
    for k, r in enumerate(res):
        try:
            ok = (isinstance(r, dict) and all(key in r for key in ("image_id", "category_id", "bbox", "score"))
                  and int(r["category_id"]) == r["category_id"] and float(r["score"]) is not None
                  and np.asarray(r["bbox"], dtype=np.float64).shape == (4,))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            image = r.get("image_id", "?") if isinstance(r, dict) else "?"
            return (f"entry {k} (image id {image!r}) is not {{image_id, category_id (int), "
                    f"bbox: [x, y, w, h], score}}: {str(r)[:200]}")
    return "malformed entries"  # pragma: no cover (the fast path failed for a reason found above)


def import_per_image_folder(folder: str | Path, images, labelspace: LabelSpace, *, labels: str = "coco80",
                            score_threshold: float = 0.0, detector: str = "", weights: str = "", nms="",
                            missing_ok: bool = False, attrs: dict | None = None) -> Detections:
    """Import one JSON per image, ``{"boxes": [[x1, y1, x2, y2], ...], "scores", "labels", "size": [w, h]}``.

    The file of image ``a/b.jpg`` is ``folder/a/b.json``; boxes are coord xyxy. ``images``:
    an :class:`Annotations` or (image_id, file_name, width, height) records (ids unused).
    ``labels``: ``'coco80'`` (0-based COCO-80 index), ``'coco91'`` (COCO category id) or
    ``'dataset'`` (already object indices of ``labelspace``). A missing file is an error
    unless ``missing_ok`` (then the image has no detections). ``size``, when present,
    must equal the image size (it fills in unknown sizes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DetectionsError(f"{folder}: no such folder")
    _, names, sizes = _image_table(images)
    sizes = sizes.copy()
    parts, files, missing = [], [], 0
    real_folder = os.path.realpath(folder)
    for i, name in enumerate(names):
        try:  # a name from the image list must not reach a JSON file outside the folder
            p = inside(folder, str(PurePath(name).with_suffix(".json")), real_root=real_folder,
                       folder="detections folder")
        except UnsafeNameError as e:
            raise DetectionsError(str(e)) from None
        files.append(p)
        if not p.is_file():
            if not missing_ok:
                raise DetectionsError(f"{folder}: no detections file {p.relative_to(folder)} for image {name}")
            missing += 1
            continue
        parts.append((i, *_read_image_file(p, name, sizes[i])))
    if missing:
        log.warning("%s: %d of %d images have no detections file; taken as no detections", folder, missing, len(names))
    count = [len(s) for _, _, s, _ in parts]
    img = np.repeat(np.array([i for i, *_ in parts], dtype=np.int64), count)
    boxes = np.concatenate([b for _, b, _, _ in parts]) if parts else np.zeros((0, 4))
    scores = np.concatenate([s for _, _, s, _ in parts]) if parts else np.zeros(0)
    raw = np.concatenate([lab for *_, lab in parts]) if parts else np.zeros(0, np.int64)
    local = ragged.within(count)  # index within its file
    describe = lambda r: f"{files[img[r]]} (image {names[img[r]]}), detection {local[r]}"  # noqa: E731
    stats = {"entries": int(len(img)), "missing_files": missing}
    dets = _assemble(names, sizes, img, boxes, scores, raw, labels, labelspace, score_threshold, describe, stats)
    dets.attrs.update(_provenance(labelspace, folder, detector, weights, nms, score_threshold, labels, stats, attrs))
    return dets


def _read_image_file(p: Path, name: str, size: np.ndarray):
    """boxes float64 [k, 4], scores float64 [k], labels int64 [k] of one per-image file.

    Writes the file's size into ``size`` (int64 [2], in place) where that is unknown.
    """
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DetectionsError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(d, dict) or any(k not in d for k in ("boxes", "scores", "labels")):
        raise DetectionsError(f"{p}: expected an object with 'boxes', 'scores' and 'labels'")
    try:
        boxes = np.asarray(d["boxes"], dtype=np.float64)
        scores = np.asarray(d["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(d["labels"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DetectionsError(f"{p}: 'boxes', 'scores' or 'labels' is not numeric ({e})") from e
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DetectionsError(f"{p}: 'boxes' must be a list of [x1, y1, x2, y2], got shape {boxes.shape}")
    if not len(boxes) == len(scores) == len(labels):
        raise DetectionsError(f"{p}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
    if np.any(labels != np.round(labels)):
        raise DetectionsError(f"{p}: 'labels' must be integers")
    if "size" in d:
        try:
            w, h = (int(x) for x in d["size"])
        except (TypeError, ValueError) as e:
            raise DetectionsError(f"{p}: 'size' must be [width, height] ({e})") from e
        if size.min() <= 0:
            size[:] = (w, h)
        elif (w, h) != tuple(size.tolist()):
            # Boxes in a resized frame would be silently wrong: refuse.
            raise DetectionsError(f"{p}: size [{w}, {h}] differs from the size of image {name}, {size.tolist()}")
    return boxes, scores, labels.astype(np.int64)


def _assemble(names: list[str], sizes: np.ndarray, img: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
              raw_labels: np.ndarray, kind: str, labelspace: LabelSpace, score_threshold: float,
              describe: Callable[[int], str], stats: dict) -> Detections:
    """The shared steps of the importers, on flat rows (img int64 [R], boxes coord float64 [R, 4],
    scores float64 [R], raw_labels int64 [R] of ``kind``): check, map labels, threshold, clip,
    drop empty boxes, sort by image then descending score. Counts go into ``stats``."""
    # Broken numbers are an error even in rows dropped below: they mean a broken export.
    for mask, what in ((~np.isfinite(scores), "score"), (~np.isfinite(boxes).all(axis=1), "box")):
        if mask.any():
            r = int(np.flatnonzero(mask)[0])
            raise DetectionsError(f"{describe(r)}: {what} is not finite "
                                  f"(box {boxes[r].tolist()}, score {scores[r]})")
    if kind == "dataset":
        objects = raw_labels
        out = np.flatnonzero((objects < 0) | (objects >= labelspace.num_objects))
        if len(out):
            raise DetectionsError(f"{describe(int(out[0]))}: label {objects[out[0]]} is not an object of "
                                  f"label space {labelspace.name!r} ({labelspace.num_objects} objects)")
    else:
        objects = labelspace.object_from_coco(raw_labels, kind)
    unmapped = objects < 0
    if unmapped.any():
        ids, cnt = np.unique(raw_labels[unmapped], return_counts=True)
        log.info("dropped %d detections of %d %s classes without an object in %r (ids %s)", int(unmapped.sum()),
                 len(ids), kind, labelspace.name, ", ".join(f"{i}: {c}" for i, c in zip(ids.tolist(), cnt.tolist())))
    below = ~unmapped & (scores < score_threshold)
    keep = ~unmapped & ~below

    w = np.where(sizes[img, 0] > 0, sizes[img, 0], np.inf)  # unknown size: nothing to clip to
    h = np.where(sizes[img, 1] > 0, sizes[img, 1], np.inf)
    clipped = B.clip_coord(boxes, w, h)
    changed = keep & np.any(clipped != boxes, axis=1)
    clipped = clipped.astype(np.float32)  # the area test on what is stored
    empty = keep & (B.area_coord(clipped) <= 0)
    keep &= ~empty
    if empty.any():
        log.info("dropped %d boxes of zero area (after clipping to the image)", int(empty.sum()))

    rows = np.flatnonzero(keep)
    # lexsort is stable: equal scores keep the detector's order.
    rows = rows[np.lexsort((-scores[rows], img[rows]))]
    offsets = ragged.offsets(np.bincount(img[rows], minlength=len(names)))
    stats.update(unmapped_class=int(unmapped.sum()), below_threshold=int(below.sum()),
                 clipped=int(changed.sum()), zero_area=int(empty.sum()), kept=int(len(rows)))
    return Detections(names, sizes, offsets, clipped[rows], scores[rows].astype(np.float32), objects[rows])


def _provenance(labelspace: LabelSpace, source: Path, detector: str, weights: str, nms, score_threshold: float,
                category_ids: str, stats: dict, extra: dict | None) -> dict:
    attrs = {
        "detector": str(detector), "weights": str(weights), "score_threshold": float(score_threshold),
        "nms": nms, "box_format": "coord", "category_ids": category_ids,
        "labelspace": labelspace.name, "labelspace_fingerprint": labelspace.fingerprint,
        "source": str(source), "hoidata_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "import_stats": dict(stats),
    }
    attrs.update(extra or {})
    return attrs


def summary(dets: Detections) -> str:
    """A few lines: counts, score range and (for imports) what was dropped."""
    c = dets.counts
    lines = [f"images      {len(dets)} ({int((c == 0).sum())} without detections)",
             f"detections  {dets.num_detections} ({c.mean() if len(c) else 0:.1f} per image, max {c.max(initial=0)})"]
    if dets.num_detections:
        lines.append(f"scores      {dets.scores.min():.4g} .. {dets.scores.max():.4g}")
    st = dets.attrs.get("import_stats")
    if isinstance(st, dict):
        dropped = {k: v for k, v in st.items() if k not in ("entries", "kept", "clipped") and v}
        lines.append(f"read        {st.get('entries', '?')} detections; clipped {st.get('clipped', 0)}; dropped: "
                     + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items()) or "none"))
    return "\n".join(lines)
