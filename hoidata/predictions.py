"""Predictions: the interchange format between any HOI detector and the evaluator.

JSON (``.json`` or ``.json.gz``)::

    {"box_format": "pixel0" | "pixel1" | "coord",
     "predictions": {"<file name>": [[hx1, hy1, hx2, hy2, ox1, oy1, ox2, oy2, hoi, score], ...]}}

Binary (``.npz``, for large runs; the same content as flat arrays): ``file_names`` [M] str,
``image`` int64 [P] (index into file_names), ``boxes_h`` / ``boxes_o`` float64 [P, 4],
``hoi`` int64 [P], ``score`` float64 [P], ``box_format`` str.

In memory (:class:`Predictions`) rows keep the order of the file, which matters: the
official evaluation breaks score ties by image order, then by row order.

JSON rows are parsed from the file's bytes (:mod:`hoicore.json_rows`), not through a Python
list per row; files that reader does not take go through :func:`json.load`, with the same
result and the same errors.
"""

from __future__ import annotations

import gzip
import json
import logging
import mmap
import os
import zipfile
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from hoicore import json_rows
from hoicore.errors import HoiError
from hoicore.files import atomic_write, load_json

from . import boxes as B
from . import ragged
from .labelspace import LabelSpace, hico_det

ROW_LENGTH = 10
NPZ_ARRAYS = ("file_names", "image", "boxes_h", "boxes_o", "hoi", "score")

log = logging.getLogger(__name__)


class PredictionsError(HoiError, ValueError):
    """A malformed predictions file; the message names the image and the row."""


@dataclass
class Predictions:
    """Scored human-object pairs (shapes in the module docstring); boxes in ``box_format``."""

    file_names: list[str]
    image: np.ndarray
    boxes_h: np.ndarray
    boxes_o: np.ndarray
    hoi: np.ndarray
    score: np.ndarray
    box_format: str = "coord"
    # the classes ``hoi`` indexes when they are not the evaluated label space's own in its
    # order (:func:`hoidata.classes.class_record`: names, prompts, text hash); None: those
    classes: dict | None = None
    # the label space the predictions were made over (its dict, hoidata schema), so readers
    # need not be told it and can refuse another; None: not recorded (files from elsewhere)
    labelspace: dict | None = None

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def from_arrays(cls, file_names, image, boxes_h, boxes_o, hoi, score, box_format="coord") -> "Predictions":
        return cls(list(file_names), np.asarray(image, np.int64), np.asarray(boxes_h, np.float64).reshape(-1, 4),
                   np.asarray(boxes_o, np.float64).reshape(-1, 4), np.asarray(hoi, np.int64),
                   np.asarray(score, np.float64), B.check_format(box_format))

    def validate(self, num_classes: int, source: str = "predictions") -> None:
        """Raise :class:`PredictionsError` naming the first bad row (class range, finiteness)
        or, for arrays that do not fit together, the array."""
        lengths = {k: len(getattr(self, k)) for k in ("image", "boxes_h", "boxes_o", "hoi", "score")}
        if len(set(lengths.values())) > 1:
            raise PredictionsError(f"{source}: arrays of different lengths {lengths}")
        outside = (self.image < 0) | (self.image >= len(self.file_names))
        if outside.any():
            raise PredictionsError(f"{source}: row {int(np.flatnonzero(outside)[0])} has image index "
                                   f"{int(self.image[outside][0])}, outside the {len(self.file_names)} file names")
        bad = ((self.hoi < 0) | (self.hoi >= num_classes) | ~np.isfinite(self.score)
               | ~np.isfinite(self.boxes_h).all(1) | ~np.isfinite(self.boxes_o).all(1))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            name = self.file_names[self.image[k]]
            row = int(np.count_nonzero(self.image[:k] == self.image[k]))
            if not 0 <= self.hoi[k] < num_classes:
                why = f"HOI class {self.hoi[k]} is out of range 0..{num_classes - 1}"
            elif not np.isfinite(self.score[k]):
                why = f"score is {self.score[k]}"
            else:
                why = "a box coordinate is not finite"
            raise PredictionsError(f"{source}: image {name}, row {row}: {why}")


    def images_in(self, image_names: list[str], *, ignore_unknown_images: bool = False,
                  source: str = "predictions") -> np.ndarray:
        """int64 [P]: each row's index in ``image_names``, -1 for a row on an image not there.

        Unknown images raise :class:`PredictionsError` naming one, unless
        ``ignore_unknown_images`` (then a warning; callers drop the -1 rows)."""
        index = {n: i for i, n in enumerate(image_names)}
        img_map = np.array([index.get(n, -1) for n in self.file_names], dtype=np.int64)
        img = img_map[self.image] if len(self) else np.zeros(0, np.int64)
        unknown = img < 0
        if unknown.any():
            names = sorted({self.file_names[i] for i in np.unique(self.image[unknown])})
            if unknown.all():  # skipping them all would score nothing as 0.00: not the fix
                raise PredictionsError(
                    f"{source}: none of its {len(names)} image(s) is in the annotations (e.g. {names[0]}): "
                    "these predictions are for another split or dataset; pass the annotations they were made on "
                    "(--annotations FILE)")
            if not ignore_unknown_images:
                raise PredictionsError(
                    f"{source}: image {names[0]} is not in the annotations ({len(names)} unknown image(s)); "
                    "check the file names, or pass --ignore-unknown-images to skip them")
            log.warning("skipping %d predictions on %d image(s) not in the annotations, e.g. %s",
                        int(unknown.sum()), len(names), names[0])
        return img


def _rows_error(source, name, rows) -> PredictionsError:
    """Find the row that made the fast conversion fail and say what is wrong with it."""
    if not isinstance(rows, list):
        return PredictionsError(f"{source}: image {name}: expected a list of rows, got {type(rows).__name__}")
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != ROW_LENGTH:
            n = len(row) if isinstance(row, list) else type(row).__name__
            return PredictionsError(f"{source}: image {name}, row {r}: expected {ROW_LENGTH} numbers "
                                    f"[hx1, hy1, hx2, hy2, ox1, oy1, ox2, oy2, hoi, score], got {n}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            return PredictionsError(f"{source}: image {name}, row {r}: non-numeric value in {row!r}")
    return PredictionsError(f"{source}: image {name}: malformed rows")


def _all_numbers(images) -> bool:
    """Every value of every row of every image (lists of lists) a JSON number: no
    booleans, nulls or strings, which numpy would turn into 1.0, NaN or a parsed float."""
    return set(map(type, chain.from_iterable(chain.from_iterable(images)))) <= {int, float}


def _rows_array(rows) -> np.ndarray | None:
    """One image's rows (from :mod:`json`) as float64 [n, 10], or None when they are not
    lists of ten numbers (:func:`_rows_error` then says which row)."""
    try:
        arr = np.array(rows, dtype=np.float64).reshape(-1, ROW_LENGTH)
    except (ValueError, TypeError):
        return None
    if any(not isinstance(r, list) or len(r) != ROW_LENGTH for r in rows) or not _all_numbers([rows]):
        return None
    return arr


def _check_document(path, d, box_format: str | None) -> str:
    """The box format of a parsed predictions file, after its structure checks."""
    if not isinstance(d, dict) or not isinstance(d.get("predictions"), dict):
        raise PredictionsError(f"{path}: expected an object with a 'predictions' mapping of file name -> rows")
    fmt = box_format or d.get("box_format")
    if fmt is None:
        raise PredictionsError(f"{path}: no 'box_format' in the file; pass --box-format pixel0|pixel1|coord")
    try:
        B.check_format(fmt)
    except ValueError as e:
        raise PredictionsError(f"{path}: {e}") from e
    return fmt


def _finish(path, names, counts, boxes_h, boxes_o, hoi_f, score, fmt) -> Predictions:
    """Predictions from the rows' columns (the HOI column as read, in float64)."""
    image = ragged.owners(counts)
    # the value given, before int64 would round it or (beyond 2^62) wrap it around
    for bad, what in ((hoi_f != np.round(hoi_f), "is not an integer"), (np.abs(hoi_f) >= 2 ** 62, "is out of range")):
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            row = k - int(np.searchsorted(image, image[k]))
            raise PredictionsError(f"{path}: image {names[image[k]]}, row {row}: HOI class {hoi_f[k]} {what}")
    return Predictions(names, image, boxes_h, boxes_o, hoi_f.astype(np.int64), score, fmt)


def read_predictions(path, box_format: str | None = None) -> Predictions:
    """Read JSON / JSON.gz / NPZ predictions; ``box_format`` overrides the file's own."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in NPZ_ARRAYS if k not in z.files]
                if missing or (box_format is None and "box_format" not in z.files):
                    raise PredictionsError(f"{path}: missing array(s) {', '.join(missing or ['box_format'])}; "
                                           f"expected {', '.join(NPZ_ARRAYS)} and box_format")
                a = {k: z[k] for k in NPZ_ARRAYS}
                fmt = box_format or str(z["box_format"])
                classes = json.loads(str(z["classes"])) if "classes" in z.files else None
                labelspace = json.loads(str(z["labelspace"])) if "labelspace" in z.files else None
        except PredictionsError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise PredictionsError(f"{path}: not a readable .npz file ({e})") from e
        for k in ("image", "hoi"):
            if a[k].dtype.kind not in "iu" and len(a[k]):
                raise PredictionsError(f"{path}: '{k}' must hold integers, found {a[k].dtype}")
        n = len(a["score"])
        for k, shape in (("boxes_h", (n, 4)), ("boxes_o", (n, 4)), ("image", (n,)), ("hoi", (n,)), ("score", (n,))):
            if a[k].shape != shape:
                raise PredictionsError(f"{path}: arrays of different lengths or shapes: '{k}' has shape "
                                       f"{a[k].shape}, expected {shape} for the {n} scores")
        pred = Predictions.from_arrays([str(s) for s in a["file_names"]], a["image"], a["boxes_h"],
                                       a["boxes_o"], a["hoi"], a["score"], fmt)
        return _with_records(path, pred, classes, labelspace)
    pred = _read_json_fast(path, box_format)
    if pred is not None:
        return pred
    size = path.stat().st_size if path.is_file() else 0
    if json_rows.available() and size > REFERENCE_READ_MAX:
        raise PredictionsError(f"{path}: {size / 2**20:,.0f} MiB that the streaming reader does not take (not valid "
                               "JSON, e.g. a truncated write, or a key given twice); json.load would hold about ten "
                               "times that in memory, so it is not tried: check that the file is whole, or write "
                               "it as .npz")
    return _read_json_reference(path, box_format)


# Past this size on disk, a file the streaming reader refuses is not handed to json.load
# (about ten times the file in memory, only to name the error).
REFERENCE_READ_MAX = 256 << 20


def _with_records(path, pred: Predictions, classes, labelspace) -> Predictions:
    """``pred`` with the file's class record (an object with a list 'hoi') and label-space
    record (an object), checked for shape only (:func:`labelspace_of` reads the latter)."""
    if classes is not None and (not isinstance(classes, dict) or not isinstance(classes.get("hoi"), list)):
        raise PredictionsError(f"{path}: 'classes' must be an object whose 'hoi' lists the scored classes as "
                               "[verb, object] names")
    if labelspace is not None and not isinstance(labelspace, dict):
        raise PredictionsError(f"{path}: 'labelspace' must be a label-space object, not {type(labelspace).__name__}")
    pred.classes, pred.labelspace = classes, labelspace
    return pred


def labelspace_of(pred: Predictions, given=None, source: str = "predictions") -> LabelSpace:
    """The label space to read ``pred`` with: ``given`` (a name, file or :class:`LabelSpace`)
    when there is one, refused if the predictions record another (and index it directly, not
    through a class record, which is matched by name); else the recorded one; else HICO-DET's."""
    recorded = None
    if pred.labelspace is not None:
        recorded = LabelSpace.from_dict(pred.labelspace, source=f"{source}: its 'labelspace' record")
    if given is None:
        return recorded if recorded is not None else hico_det()
    ls = given if isinstance(given, LabelSpace) else LabelSpace.load(given)
    if recorded is not None and pred.classes is None and recorded.fingerprint != ls.fingerprint:
        raise PredictionsError(f"{source} was made over label space {recorded.name!r} ({recorded.num_classes} "
                               f"classes, sha256 {recorded.fingerprint[:12]}), not over {ls.name!r} "
                               f"({ls.num_classes} classes, sha256 {ls.fingerprint[:12]}): drop --labelspace to use "
                               "its own, or pass the label space it was made with")
    return ls


def _unique_keys(path):
    """A json ``object_pairs_hook`` refusing a key given twice in one object: ``json`` would
    keep the last, so an image listed twice under "predictions" would lose its other rows."""
    def hook(pairs):
        d = dict(pairs)
        if len(d) != len(pairs):
            seen: set = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise PredictionsError(f"{path}: {twice!r} is a key twice in one object (an image listed twice under "
                                   "\"predictions\" would keep only one of its lists of rows); merge them into one")
        return d
    return hook


def _read_json_reference(path, box_format: str | None) -> Predictions:
    """The JSON file through :func:`json.load`: every row a Python list first."""
    if path.suffix == ".gz" and path.is_file():
        try:
            _read_bytes(path)  # only to refuse a gzip bomb before json expands it further
        except (OSError, EOFError):
            pass  # load_json names what is wrong with the file
    d = load_json(path, PredictionsError, "predictions", object_pairs_hook=_unique_keys(path))
    fmt = _check_document(path, d, box_format)
    preds = d["predictions"]
    names = list(preds)
    counts = np.array([len(v) if isinstance(v, list) else -1 for v in preds.values()], dtype=np.int64)
    if np.any(counts < 0):
        name = names[int(np.flatnonzero(counts < 0)[0])]
        raise _rows_error(path, name, preds[name])
    try:  # one C-level conversion for all rows; fall back to a row-by-row search on failure
        arr = np.array(list(chain.from_iterable(preds.values())), dtype=np.float64).reshape(-1, ROW_LENGTH)
        if arr.shape[0] != counts.sum() or not _all_numbers(preds.values()):
            raise ValueError
    except (ValueError, TypeError):
        for name in names:
            if _rows_array(preds[name]) is None:
                raise _rows_error(path, name, preds[name]) from None
        raise PredictionsError(f"{path}: malformed rows") from None  # pragma: no cover
    return _with_records(path, _finish(path, names, counts, arr[:, 0:4].copy(), arr[:, 4:8].copy(), arr[:, 8],
                                       arr[:, 9].copy(), fmt), d.get("classes"), d.get("labelspace"))


def _read_bytes(path: Path):
    """The file's bytes: mapped read-only (not read into memory), or for ``.gz``
    decompressed as a stream into one buffer (never the compressed copy beside it)."""
    if path.suffix != ".gz":
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
    cap = max(MAX_GZIP_BYTES, MAX_GZIP_RATIO * os.path.getsize(path))
    data = bytearray()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            data += chunk
            if len(data) > cap:
                raise PredictionsError(f"{path}: expands to more than {cap / 2**20:,.0f} MiB ({MAX_GZIP_RATIO}x its "
                                       f"size, and at least {MAX_GZIP_BYTES / 2**20:,.0f} MiB): not a predictions "
                                       "file this reader takes (a gzip bomb?); if it is real, decompress it "
                                       "yourself and pass the .json")
    return data


# A .json.gz is decompressed into memory: at most this many bytes, or this many times its
# size (predictions JSON compresses 5-10x; a gzip bomb far more).
MAX_GZIP_BYTES, MAX_GZIP_RATIO = 1 << 30, 100


def _read_json_fast(path: Path, box_format: str | None) -> Predictions | None:
    """The JSON file with its rows parsed from the raw bytes, each image's list of rows in
    C; None where this reader cannot vouch for giving what :func:`_read_json_reference`
    gives (the caller then reads the file that way). The checks, their order and their
    messages are the reference's."""
    if not json_rows.available():
        log.debug("pysimdjson is not installed: reading %s with json.load", path)
        return None
    if not path.is_file():
        return None
    try:
        data = _read_bytes(path)
    except PredictionsError:
        raise
    except Exception:  # noqa: BLE001 - the reference read reports it
        return None
    try:
        doc = json_rows.scan(data, object_pairs_hook=_unique_keys(path))
    except PredictionsError:  # a key twice: the reference read says so, after what json finds first
        return None
    if doc is None:
        return None
    d, spans = doc.value, doc.spans
    if not isinstance(d, dict) or not isinstance(d.get("predictions"), dict):
        return None
    if not box_format and d.get("box_format") is not None and not isinstance(d["box_format"], str):
        return None  # the message would show the file's value, which holds placeholders
    preds = d["predictions"]
    names, values = list(preds), list(preds.values())
    span_of = {v.index: i for i, v in enumerate(values) if isinstance(v, json_rows.Span)}
    try:  # spans that are not an image's rows (a duplicate key's first value, ...) must still be JSON
        for k in set(range(len(spans))) - set(span_of):
            json_rows.load_span(data, spans[k])
    except (ValueError, RecursionError):
        return None
    rows_of = dict(zip(span_of, json_rows.span_rows(data, spans, list(span_of))))
    counts = np.array([rows_of[v.index] if isinstance(v, json_rows.Span) else len(v) if isinstance(v, list) else 0
                       for v in values], dtype=np.int64)
    offsets = ragged.offsets(counts)
    total = int(offsets[-1])
    boxes_h, boxes_o = np.empty((total, 4)), np.empty((total, 4))
    hoi_f, score = np.empty(total), np.empty(total)

    def put(at, rows):  # rows [n, 10] -> output rows at..at+n-1
        at = slice(at, at + len(rows))
        boxes_h[at], boxes_o[at], hoi_f[at], score[at] = rows[:, 0:4], rows[:, 4:8], rows[:, 8], rows[:, 9]

    def sink(block, parts):
        dest = [int(offsets[span_of[k]]) + first for k, first, _ in parts]
        if all(a + n == b for a, (_, _, n), b in zip(dest, parts, dest[1:])):
            put(dest[0], block)  # the usual case: one copy for the block
            return
        row = 0
        for at, (_, _, n) in zip(dest, parts):
            put(at, block[row:row + n])
            row += n

    failed = json_rows.RowReader(data).read(spans, list(span_of), sink)
    slow = {}  # image -> its rows from json, where the fast parse did not take them
    try:
        for k in sorted(failed):
            slow[span_of[k]] = json_rows.load_span(data, spans[k])
    except (ValueError, RecursionError):
        return None
    try:  # the records' lists of numbers were spans too
        classes, labelspace = (_resolved(d.get(k), {i: json_rows.load_span(data, spans[i]) for i in _spans(d.get(k))})
                               for k in ("classes", "labelspace"))
    except (ValueError, RecursionError):
        return None
    del data
    fmt = _check_document(path, d, box_format)
    for i, v in enumerate(values):
        if not isinstance(v, (list, json_rows.Span)):
            raise _rows_error(path, names[i], v)
    for i, v in enumerate(values):
        rows = slow.get(i, v if isinstance(v, list) else None)
        if rows is None:
            continue
        arr = _rows_array(rows)
        if arr is None:
            raise _rows_error(path, names[i], rows)
        if len(arr) != counts[i]:
            return None  # pragma: no cover - a list of rows holds one '[' a row
        put(int(offsets[i]), arr)
    return _with_records(path, _finish(path, names, counts, boxes_h, boxes_o, hoi_f, score, fmt), classes,
                         labelspace)


def _spans(value) -> list[int]:
    """The indices of the spans inside ``value`` of a scanned document."""
    if isinstance(value, json_rows.Span):
        return [value.index]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [k for v in items for k in _spans(v)]


def _resolved(value, loaded: dict):
    """``value`` of a scanned document with every span replaced by its value in ``loaded``."""
    if isinstance(value, json_rows.Span):
        return loaded[value.index]
    if isinstance(value, dict):
        return {k: _resolved(v, loaded) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, loaded) for v in value]
    return value


def write_predictions(pred: Predictions, path, provenance: dict | None = None) -> None:
    """Write JSON (``.json`` / ``.json.gz``) or NPZ (``.npz``) atomically (temp file, then rename).

    ``provenance``: what made the predictions, stored beside them (a top-level JSON key, or a
    JSON string array in the npz) and ignored by :func:`read_predictions`."""
    path = Path(path)
    pred.validate(max(int(pred.hoi.max(initial=0)) + 1, 1), source=f"predictions for {path}")  # no NaN in a file
    extra = {"provenance": provenance} if provenance is not None else {}
    if pred.classes is not None:
        extra["classes"] = pred.classes
    if pred.labelspace is not None:
        extra["labelspace"] = pred.labelspace
    with atomic_write(path) as tmp:
        if path.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, file_names=np.array(pred.file_names, dtype=str), image=pred.image,
                         boxes_h=pred.boxes_h, boxes_o=pred.boxes_o, hoi=pred.hoi, score=pred.score,
                         box_format=np.array(pred.box_format),
                         **{k: np.array(json.dumps(v)) for k, v in extra.items()})
        else:
            rows = np.concatenate([pred.boxes_h, pred.boxes_o, pred.hoi[:, None], pred.score[:, None]], 1).tolist()
            for r in rows:
                r[8] = int(r[8])
            out: dict[str, list] = {n: [] for n in pred.file_names}
            for i, r in zip(pred.image.tolist(), rows):
                out[pred.file_names[i]].append(r)
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(tmp, "wt") as f:
                json.dump({"box_format": pred.box_format, "predictions": out, **extra}, f)


def read_provenance(path) -> dict | None:
    """The ``provenance`` stored with a predictions file by :func:`write_predictions`, or None."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return json.loads(str(z["provenance"])) if "provenance" in z.files else None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f).get("provenance")
