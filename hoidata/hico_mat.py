"""HICO-DET's own annotation files (``hico_20160224_det/``), read with scipy.

- ``anno_bbox.mat``, the ground truth: ``bbox_train`` / ``bbox_test`` are struct arrays,
  one element per image, with ``filename``, ``size`` (``width``, ``height``, ``depth``)
  and ``hoi``, one element per HOI class annotated in the image: ``id`` (1-based HOI
  class, ``list_action`` order), ``bboxhuman`` / ``bboxobject`` (struct arrays of
  ``x1 y1 x2 y2``, 1-based inclusive pixels), ``connection`` (``[k, 2]``, 1-based: the
  human box and object box of each pair) and ``invis`` (1: the HOI happens but is not
  visible; it has no boxes). ``list_action`` names the classes (``vname``, ``nname``).
- ``anno.mat``, image-level labels: ``anno_train`` / ``anno_test`` are ``[C, N]`` doubles
  (1 positive, 0 ambiguous, -1 negative, NaN unknown) whose columns are the images of
  ``list_train`` / ``list_test``.

Both are read as ho-rcnn's ``eval_one.m`` reads them. Ground truth is one pair per
``connection`` row of each visible ``hoi`` entry (a later visible entry of the same class
in an image replaces an earlier one, as ``gt_all{hoi_id, i} = boxes`` does; a warning
says so). The Known-Object images of object o are those whose labels are 1 for any HOI
class of o (:func:`read_image_labels`).

Files are loaded with ``squeeze_me=False``, so every MATLAB value comes back as an
array of at least two dimensions: a 1x1 struct array reads like a 1xk one, and a
one-row ``connection`` like a k-row one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hoicore.files import scipy_io

from . import boxes as B
from .annotations import AnnotationError, Annotations, check_split, hico_test_annotations
from .labelspace import LabelSpace

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_LABELS_FILE = "anno.mat"  # beside anno_bbox.mat in hico_20160224_det/
_CORNERS = ("x1", "y1", "x2", "y2")


# -- MATLAB values ---------------------------------------------------------------------

def _load(path, prefix: str, split: str, extra: tuple[str, ...]) -> dict:
    """Variables ``{prefix}_{split}`` and ``extra`` of MAT-file ``path`` (unsqueezed arrays);
    AnnotationError naming the file when it is unreadable or lacks ``{prefix}_{split}``."""
    if split not in SPLITS:
        raise AnnotationError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    sio, path, name = scipy_io(), Path(path), f"{prefix}_{split}"
    if not path.is_file():
        raise AnnotationError(f"{path}: no such annotation file")
    try:
        present = [v[0] for v in sio.whosmat(path)]
        m = sio.loadmat(path, variable_names=[name, *extra], squeeze_me=False, struct_as_record=True) \
            if name in present else {}
    except NotImplementedError as e:  # scipy reads up to v7; v7.3 files are HDF5
        raise AnnotationError(f"{path}: a MATLAB v7.3 file, which cannot be read here; in MATLAB, load it "
                              "and save it again with save(..., '-v7')") from e
    except (sio.matlab.MatReadError, ValueError, OSError, TypeError, IndexError, EOFError) as e:
        raise AnnotationError(f"{path}: not a readable MATLAB file ({e!r})") from e
    if name not in m:
        other = f"{prefix}_{SPLITS[1 - SPLITS.index(split)]}"
        hint = f"; pass --split {other.split('_')[1]} for {other!r}" if other in present else \
            f" (not HICO-DET's {'anno_bbox.mat' if prefix == 'bbox' else 'anno.mat'}?)"
        raise AnnotationError(f"{path}: no variable {name!r} (it holds {', '.join(present) or 'none'}){hint}")
    return m


def _records(a, at: str) -> list:
    """The elements of a struct array (any shape) in MATLAB's column-major order; [] for an
    empty value (MATLAB's ``[]``)."""
    a = np.asarray(a)
    if a.size == 0:
        return []
    if a.dtype.names is None:
        raise AnnotationError(f"{at} is {a.dtype} {a.shape}, not a struct array")
    return list(a.ravel(order="F"))


def _field(rec, name: str, at: str):
    if name not in (rec.dtype.names or ()):
        raise AnnotationError(f"{at}: no field {name!r}")
    return rec[name]


def _number(x, at: str) -> float:
    a = np.asarray(x)
    if a.size != 1 or a.dtype.kind not in "biuf":
        raise AnnotationError(f"{at} is {a.dtype} {a.shape}; expected one number")
    return float(a.ravel()[0])


def _whole(x, at: str) -> int:
    v = _number(x, at)
    if v != round(v):
        raise AnnotationError(f"{at} is {v}; expected a whole number")
    return int(v)


def _text(x, at: str) -> str:
    """A MATLAB char row vector (or a 1x1 cell holding one) as str."""
    a = np.asarray(x)
    if a.dtype == object and a.size == 1:
        return _text(a.ravel()[0], at)
    if a.dtype.kind != "U" or a.size > 1:
        raise AnnotationError(f"{at} is {a.dtype} {a.shape}, not a string")
    return str(a.ravel()[0]) if a.size else ""


def _texts(a, at: str) -> list[str]:
    """A cell array of strings (any shape, column-major) as a list of str."""
    a = np.asarray(a)
    if a.dtype != object:
        raise AnnotationError(f"{at} is {a.dtype} {a.shape}, not a cell array of strings")
    return [_text(x, f"{at}{{{k}}}") for k, x in enumerate(a.ravel(order="F"), 1)]


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _check_list_action(path, list_action, labelspace: LabelSpace) -> None:
    """Refuse a file whose ``list_action`` (``[C]`` struct: ``vname``, ``nname``) is not the
    label space's class order: its ``id`` values and label rows would mean other classes."""
    if list_action is None:
        raise AnnotationError(f"{path}: no variable 'list_action' (not one of HICO-DET's .mat files?)")
    acts = _records(list_action, f"{path}: list_action")
    if len(acts) != labelspace.num_classes:
        raise AnnotationError(f"{path}: list_action has {len(acts)} HOI classes, label space "
                              f"{labelspace.name!r} {labelspace.num_classes}; pass the right --labelspace")
    for c, act in enumerate(acts):
        at = f"{path}: list_action({c + 1})"
        got = (_text(_field(act, "vname", at), f"{at}.vname"), _text(_field(act, "nname", at), f"{at}.nname"))
        v, o = labelspace.hoi[c]
        want = (labelspace.verbs[v], labelspace.objects[o])
        if tuple(map(_norm, got)) != tuple(map(_norm, want)):
            raise AnnotationError(f"{at} is ({got[0]}, {got[1]}), but HOI class {c} of label space "
                                  f"{labelspace.name!r} is ({want[0]}, {want[1]}); pass the right --labelspace")


# -- anno_bbox.mat -----------------------------------------------------------------------

def _boxes(x, at: str) -> np.ndarray:
    """float64 [m, 4] ``pixel1`` boxes from a struct array with fields x1, y1, x2, y2."""
    return np.array([[_number(_field(r, k, f"{at}({i})"), f"{at}({i}).{k}") for k in _CORNERS]
                     for i, r in enumerate(_records(x, at), 1)], dtype=np.float64).reshape(-1, 4)


def _connection(x, at: str, num_h: int, num_o: int) -> np.ndarray:
    """int64 [k, 2]: 0-based (human box, object box) of each pair, from a 1-based [k, 2] matrix."""
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if a.dtype.kind not in "iuf" or a.ndim != 2 or a.shape[1] != 2 or np.any(a != np.round(a)):
        raise AnnotationError(f"{at} is {a.dtype} {a.shape}; expected whole numbers [k, 2] (human box, object box)")
    a = a.astype(np.int64) - 1
    for col, (n, what) in enumerate(((num_h, "bboxhuman"), (num_o, "bboxobject"))):
        bad = np.flatnonzero((a[:, col] < 0) | (a[:, col] >= n))
        if len(bad):
            r = int(bad[0])
            raise AnnotationError(f"{at}: row {r + 1} names {what}({a[r, col] + 1}), but there are {n}")
    return a


def _image_size(img, at: str) -> tuple[int, int]:
    """(width, height) from the ``size`` struct of an image."""
    recs = _records(_field(img, "size", at), f"{at}, size")
    if len(recs) != 1:
        raise AnnotationError(f"{at}, size has {len(recs)} elements; expected one struct (width, height, depth)")
    return tuple(_whole(_field(recs[0], k, f"{at}, size"), f"{at}, size.{k}") for k in ("width", "height"))


def _image_pairs(img, labelspace: LabelSpace, at: str) -> tuple[dict, list[int]]:
    """The pairs of one image (dict of :meth:`Annotations.from_lists`, coord boxes) from its
    visible ``hoi`` entries, and the classes whose entry replaced an earlier one."""
    by_class, replaced = {}, []
    for j, h in enumerate(_records(_field(img, "hoi", at), f"{at}, hoi"), 1):
        where = f"{at}, hoi({j})"
        if _number(_field(h, "invis", where), f"{where}.invis"):
            continue
        c = _whole(_field(h, "id", where), f"{where}.id") - 1
        if not 0 <= c < labelspace.num_classes:
            raise AnnotationError(f"{where}.id is {c + 1}; HOI classes are 1..{labelspace.num_classes}")
        bh = _boxes(_field(h, "bboxhuman", where), f"{where}.bboxhuman")
        bo = _boxes(_field(h, "bboxobject", where), f"{where}.bboxobject")
        conn = _connection(_field(h, "connection", where), f"{where}.connection", len(bh), len(bo))
        if c in by_class:
            replaced.append(c)
        by_class[c] = (bh[conn[:, 0]], bo[conn[:, 1]])
    classes = list(by_class)
    hoi = np.repeat(np.array(classes, dtype=np.int64), [len(by_class[c][0]) for c in classes])
    stack = lambda k: np.concatenate([by_class[c][k] for c in classes]) if classes else np.zeros((0, 4))  # noqa: E731
    pairs = {"boxes_h": B.convert(stack(0), "pixel1", "coord"), "boxes_o": B.convert(stack(1), "pixel1", "coord"),
             "hoi": hoi, "verb": labelspace.hoi_verb[hoi], "object": labelspace.hoi_object[hoi]}
    return pairs, replaced


def read_anno_bbox(path, labelspace: LabelSpace, split: str = "test") -> Annotations:
    """Ground truth of one split of HICO-DET's ``anno_bbox.mat`` (``bbox_{split}``), image
    order as in the file, boxes in ``coord``; checked as the JSON readers check theirs."""
    m = _load(path, "bbox", split, ("list_action",))
    _check_list_action(path, m.get("list_action"), labelspace)
    var = f"bbox_{split}"
    names, sizes, per_image, replaced = [], [], [], []
    for k, img in enumerate(_records(m[var], f"{path}: {var}"), 1):
        name = _text(_field(img, "filename", f"{path}: {var}({k})"), f"{path}: {var}({k}).filename")
        at = f"{path}: image {name}"
        sizes.append(_image_size(img, at))
        pairs, again = _image_pairs(img, labelspace, at)
        names.append(name)
        per_image.append(pairs)
        replaced += [(name, c) for c in again]
    if replaced:
        name, c = replaced[0]
        log.warning("%s: %d visible hoi entries repeat a class of their image (first: %s, %s); the later "
                    "replaces the earlier, as in eval_one.m", path, len(replaced), name, labelspace.class_name(c))
    return check_split(path, Annotations.from_lists(names, sizes, per_image, labelspace.name))


# -- anno.mat: Known-Object image sets ---------------------------------------------------

def _label_matrix(path, a, var: str, listed: list[str], num_classes: int) -> np.ndarray:
    """float64 [C, M] image labels, checked: the shape fits, and every value is 1, 0, -1 or NaN."""
    a = np.asarray(a)
    if a.dtype.kind not in "iuf" or a.shape != (num_classes, len(listed)):
        raise AnnotationError(f"{path}: {var} is {a.dtype} {a.shape}; expected numbers [{num_classes} HOI classes, "
                              f"{len(listed)} images of list_{var.split('_')[1]}]")
    a = a.astype(np.float64)
    bad = np.argwhere(np.isfinite(a) & ~np.isin(a, (-1.0, 0.0, 1.0)))
    if len(bad):
        c, j = bad[0]
        raise AnnotationError(f"{path}: {var}({c + 1}, {j + 1}) (HOI class {c}, image {listed[j]}) is {a[c, j]}; "
                              "expected 1, 0, -1 or NaN")
    return a


def _columns_of(path, listed: list[str], file_names: list[str], var: str) -> np.ndarray:
    """int64 [N]: the column of ``var`` (a list of M image names) of each of ``file_names``;
    both must name the same images."""
    index = {}
    for j, n in enumerate(listed):
        if n in index:
            raise AnnotationError(f"{path}: {var} names image {n} more than once")
        index[n] = j
    missing = [n for n in file_names if n not in index]
    if missing:
        raise AnnotationError(f"{path}: image {missing[0]} of the annotations is not in {var} ({len(missing)} such "
                              "image(s)); use the anno.mat of the same dataset and --split")
    if len(listed) != len(file_names):
        known = set(file_names)
        extra = [n for n in listed if n not in known]
        raise AnnotationError(f"{path}: {var} names image {extra[0]}, which the annotations lack ({len(extra)} such "
                              "image(s)); eval_one.m needs both files to hold the same images")
    return np.array([index[n] for n in file_names], dtype=np.int64)


def image_objects(positive: np.ndarray, labelspace: LabelSpace) -> np.ndarray:
    """bool [N, O] from bool [N, C]: True where some HOI class of object o is positive."""
    positive = np.asarray(positive, dtype=bool)
    return (positive.astype(np.int32) @ labelspace.object_class_mask.T.astype(np.int32)) > 0


def read_image_labels(path, file_names: list[str], labelspace: LabelSpace, split: str = "test") -> np.ndarray:
    """bool [N, O]: the Known-Object images of HICO-DET's ``anno.mat``, in the order of
    ``file_names`` (the annotations' images): row n, column o is True where ``anno_{split}``
    is 1 for any HOI class of object o in image ``file_names[n]``, as ``eval_one.m`` decides
    (0, -1 and NaN count as absent). Columns of the file are matched to ``file_names`` by
    ``list_{split}``; an image in one but not the other is refused by name."""
    var, names = f"anno_{split}", f"list_{split}"
    m = _load(path, "anno", split, (names, "list_action"))
    _check_list_action(path, m.get("list_action"), labelspace)
    if names not in m:
        raise AnnotationError(f"{path}: no variable {names!r}, which names the images of {var}")
    listed = _texts(m[names], f"{path}: {names}")
    labels = _label_matrix(path, m[var], var, listed, labelspace.num_classes)
    columns = _columns_of(path, listed, list(file_names), names)
    return image_objects(labels[:, columns].T == 1, labelspace)


def find_image_labels(annotations) -> Path | None:
    """``anno.mat`` beside an ``anno_bbox.mat`` (any ``.mat`` annotation file), where there is one."""
    if annotations is None or str(annotations) == "hico_det" or Path(annotations).suffix != ".mat":
        return None
    candidate = Path(annotations).with_name(IMAGE_LABELS_FILE)
    return candidate if candidate.is_file() and candidate != Path(annotations) else None


# -- against the bundled test set -------------------------------------------------------

@dataclass
class BundledComparison:
    """How one split differs from the bundled HICO-DET test set (file names; (file name,
    HOI class) groups whose ground-truth pairs differ in count, boxes or order)."""

    num_images: int
    num_pairs: int
    missing_images: list[str] = field(default_factory=list)
    extra_images: list[str] = field(default_factory=list)
    same_order: bool = True
    differing: list[tuple[str, int]] = field(default_factory=list)
    other_sizes: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.same_order and not (self.missing_images or self.extra_images or self.differing
                                        or self.other_sizes)

    def line(self, labelspace: LabelSpace | None = None) -> str:
        """One line for a log: equal, or what differs with a first example of each."""
        if self.equal:
            return (f"equals the bundled HICO-DET test set ({self.num_images:,} images, "
                    f"{self.num_pairs:,} ground-truth pairs)")
        name = (lambda c: labelspace.class_name(c)) if labelspace else (lambda c: f"HOI {c}")  # noqa: E731
        parts = [f"{what}: {len(v):,} (first: {v[0]})" for v, what in (
            (self.missing_images, "bundled images missing"), (self.extra_images, "images not in the bundled set"),
            (self.other_sizes, "images of another size")) if v]
        if self.differing:
            f, c = self.differing[0]
            parts.append(f"(image, HOI) with other pairs: {len(self.differing):,} (first: {f}, {name(c)})")
        if not self.same_order:
            parts.append("images in another order")
        return (f"differs from the bundled HICO-DET test set ({self.num_images:,} images, {self.num_pairs:,} pairs "
                f"here): " + "; ".join(parts))


def _groups(ann: Annotations) -> dict[tuple[str, int], list[tuple]]:
    """{(file name, HOI class): [human box + object box, ...] in annotation order}."""
    out: dict = {}
    rows = np.concatenate([ann.boxes_h, ann.boxes_o], 1).tolist()
    for g, (i, c) in enumerate(zip(ann.image_of_pair.tolist(), ann.hoi.tolist())):
        out.setdefault((ann.file_names[i], c), []).append(tuple(rows[g]))
    return out


def compare_with_bundled(ann: Annotations, bundled: Annotations | None = None) -> BundledComparison:
    """Compare ``ann`` (HICO-DET labels) with the bundled test set (``bundled``, loaded when
    not given): the images, their order and sizes, and per (image, HOI class) the pairs in
    order, the only order the evaluation depends on."""
    ref = bundled if bundled is not None else hico_test_annotations()
    mine, theirs = set(ann.file_names), set(ref.file_names)
    size_of = {n: s for n, s in zip(ref.file_names, ref.sizes.tolist())}
    a, b = _groups(ann), _groups(ref)
    both = mine & theirs
    differing = sorted(k for k in a.keys() | b.keys() if k[0] in both and a.get(k) != b.get(k))
    return BundledComparison(
        num_images=len(ann), num_pairs=ann.num_pairs,
        missing_images=[n for n in ref.file_names if n not in mine],
        extra_images=[n for n in ann.file_names if n not in theirs],
        same_order=[n for n in ann.file_names if n in theirs] == [n for n in ref.file_names if n in mine],
        differing=differing,
        other_sizes=[n for n, s in zip(ann.file_names, ann.sizes.tolist()) if n in theirs and size_of[n] != s])
