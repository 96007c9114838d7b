"""HOI ground truth: one in-memory form, two on-disk formats.

In memory (:class:`Annotations`) a split is flat arrays in CSR layout, one row per
ground-truth box pair, boxes in the ``coord`` convention (see :mod:`hoidata.boxes`):

    file_names  [N] str
    sizes       int64 [N, 2]      (width, height); -1 where unknown
    offsets     int64 [N + 1]     pairs of image i are rows offsets[i]:offsets[i+1]
    boxes_h     float64 [G, 4]    human boxes
    boxes_o     float64 [G, 4]    object boxes
    hoi         int64 [G]         HOI class
    verb        int64 [G]
    object      int64 [G]         object class, in the label space's object order

Readers:

- :func:`read_hicodet_json`: fredzzhang/hicodet ``instances_{train,test}2015.json``
  (``{filenames, size, annotation: [{boxes_h, boxes_o, hoi, verb, object}], ...}``).
- :func:`read_qpic_json`: PPDM / QPIC ``trainval_hico.json`` / ``test_hico.json``
  (``[{file_name, annotations: [{bbox, category_id}], hoi_annotation:
  [{subject_id, object_id, category_id}]}]``; COCO category ids, verbs 1..117).

- :func:`hoidata.hico_mat.read_anno_bbox`: HICO-DET's own ``anno_bbox.mat``
  (``bbox_train`` / ``bbox_test`` struct arrays; needs scipy), built on this module.

:mod:`hoidata.ground_truth` reads any of the three by what the file is.

All three carry the official MATLAB numbers (1-based inclusive pixels), hence the
default ``box_format='pixel1'``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hoicore.errors import HoiError
from hoicore.files import UnsafeNameError, image_size, inside, load_json, write_json_atomic

from . import boxes as B
from . import ragged
from .labelspace import LabelSpace

log = logging.getLogger(__name__)


class AnnotationError(HoiError, ValueError):
    """A malformed annotation file; the message names the file, the image and the field."""


@dataclass
class Annotations:
    """Ground-truth HOI pairs of one split (shapes in the module docstring)."""

    file_names: list[str]
    sizes: np.ndarray
    offsets: np.ndarray
    boxes_h: np.ndarray
    boxes_o: np.ndarray
    hoi: np.ndarray
    verb: np.ndarray
    object: np.ndarray
    labelspace_name: str = ""

    def __post_init__(self):
        n, g = len(self.file_names), len(self.hoi)
        assert self.sizes.shape == (n, 2) and self.offsets.shape == (n + 1,)
        assert self.offsets[0] == 0 and self.offsets[-1] == g and np.all(np.diff(self.offsets) >= 0)
        assert self.boxes_h.shape == (g, 4) and self.boxes_o.shape == (g, 4)
        assert self.verb.shape == (g,) and self.object.shape == (g,)

    def __len__(self) -> int:
        return len(self.file_names)

    @property
    def num_pairs(self) -> int:
        return len(self.hoi)

    @property
    def image_of_pair(self) -> np.ndarray:
        """int64 [G]: image index of each pair."""
        return ragged.owners(np.diff(self.offsets))

    @property
    def empty_images(self) -> np.ndarray:
        """int64 [k]: images without any pair (still test images for evaluation)."""
        return np.flatnonzero(np.diff(self.offsets) == 0)

    def index_of(self) -> dict[str, int]:
        return {f: i for i, f in enumerate(self.file_names)}

    def pairs_of(self, i: int) -> dict[str, np.ndarray]:
        s = slice(self.offsets[i], self.offsets[i + 1])
        return {k: getattr(self, k)[s] for k in ("boxes_h", "boxes_o", "hoi", "verb", "object")}

    @classmethod
    def from_lists(cls, file_names, sizes, per_image: list[dict], labelspace_name: str = "") -> "Annotations":
        """Build from one dict per image with keys boxes_h, boxes_o (coord), hoi, verb, object."""
        counts = [len(p["hoi"]) for p in per_image]

        def cat(k, shape):
            dtype = np.float64 if shape else np.int64
            if not per_image:
                return np.zeros((0,) + shape, dtype)
            return np.concatenate([np.asarray(p[k], dtype).reshape((-1,) + shape) for p in per_image])

        return cls(
            file_names=list(file_names),
            sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
            offsets=ragged.offsets(counts),
            boxes_h=cat("boxes_h", (4,)), boxes_o=cat("boxes_o", (4,)),
            hoi=cat("hoi", ()), verb=cat("verb", ()), object=cat("object", ()),
            labelspace_name=labelspace_name,
        )

    def equals(self, other: "Annotations") -> bool:
        return (self.file_names == other.file_names and all(
            np.array_equal(getattr(self, k), getattr(other, k))
            for k in ("sizes", "offsets", "boxes_h", "boxes_o", "hoi", "verb", "object")))


def _load_json(path):
    return load_json(path, AnnotationError, "annotation")


def _ints(values) -> np.ndarray:
    """int64 [n] from a list of whole numbers; ValueError on fractions, booleans, strings or a
    scalar (a plain cast would truncate 0.7 to class 0)."""
    a = np.asarray(values)
    if a.ndim != 1 or a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and np.any(a != np.round(a))):
        raise ValueError(f"expected a list of integers, got {values!r:.60}")
    return a.astype(np.int64)


SPLITS = ("train", "val", "test")
_HICO_SPLIT = {"HICO_train2015_": "train", "HICO_test2015_": "test"}


def split_of_names(file_names) -> str | None:
    """The split HICO-DET's file names say (every one ``HICO_train2015_*`` or every one
    ``HICO_test2015_*``), or None where they do not say one."""
    for prefix, split in _HICO_SPLIT.items():
        if file_names and all(str(n).startswith(prefix) for n in file_names):
            return split
    return None


def check_split(path, ann: "Annotations") -> "Annotations":
    """Refuse what would make the evaluation silently wrong: a file name twice (predictions
    would go to one copy), a box that is not finite or has no area."""
    bad_name = next((n for n in ann.file_names if not isinstance(n, str) or not n), None)
    if bad_name is not None:
        raise AnnotationError(f"{path}: file name {bad_name!r} is not a non-empty string")
    if len(set(ann.file_names)) != len(ann.file_names):
        seen = set()
        dup = next(n for n in ann.file_names if n in seen or seen.add(n))
        raise AnnotationError(f"{path}: image {dup} is listed more than once; each image must appear once")
    for field in ("boxes_h", "boxes_o"):
        b = getattr(ann, field)
        bad = ~np.isfinite(b).all(1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if bad.any():
            g = int(np.flatnonzero(bad)[0])
            i = int(ann.image_of_pair[g])
            raise AnnotationError(f"{path}: image {ann.file_names[i]}, pair {g - int(ann.offsets[i])}: "
                                  f"{field} {B.convert(b[g], 'coord', 'pixel1').tolist()} (pixel1) is not "
                                  "finite or has x2 < x1 or y2 < y1")
    return ann


def _check_pair_classes(path, name, labelspace: LabelSpace, hoi, verb, obj):
    for k, (c, v, o) in enumerate(zip(hoi, verb, obj)):
        if not 0 <= c < labelspace.num_classes:
            raise AnnotationError(f"{path}: image {name}, pair {k}: HOI class {c} out of range")
        if labelspace.hoi[c] != (v, o):
            raise AnnotationError(
                f"{path}: image {name}, pair {k}: HOI class {c} is (verb {labelspace.hoi[c][0]}, object "
                f"{labelspace.hoi[c][1]}) in label space {labelspace.name!r}, but the file says "
                f"(verb {v}, object {o})")


def read_hicodet_json(path, labelspace: LabelSpace, box_format: str = "pixel1") -> Annotations:
    """Read fredzzhang/hicodet's ``instances_*.json`` (``.json.gz`` too)."""
    return _from_hicodet(_load_json(path), path, labelspace, box_format)


def _from_hicodet(d, path, labelspace: LabelSpace, box_format: str) -> Annotations:
    for key in ("filenames", "size", "annotation"):
        if key not in d:
            raise AnnotationError(f"{path}: missing key {key!r} (not an instances_*.json file?)")
    if not all(isinstance(d[k], list) for k in ("filenames", "size", "annotation")):
        raise AnnotationError(f"{path}: 'filenames', 'size' and 'annotation' must be lists")
    if not len(d["filenames"]) == len(d["size"]) == len(d["annotation"]):
        raise AnnotationError(f"{path}: 'filenames', 'size' and 'annotation' differ in length")
    try:  # ragged or non-numeric entries raise here
        sizes = np.array(d["size"], dtype=np.float64).reshape(-1, 2)
        if len(sizes) != len(d["size"]) or np.any(sizes != np.round(sizes)):
            raise ValueError
    except (ValueError, TypeError) as e:
        raise AnnotationError(f"{path}: malformed 'size': each entry must be [width, height] in whole pixels") from e
    per_image = []
    for name, a in zip(d["filenames"], d["annotation"]):
        try:
            bh = np.asarray(a["boxes_h"], np.float64).reshape(-1, 4)
            bo = np.asarray(a["boxes_o"], np.float64).reshape(-1, 4)
            hoi, verb, obj = (_ints(a[k]) for k in ("hoi", "verb", "object"))
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise AnnotationError(f"{path}: image {name}: malformed annotation ({e!r})") from e
        if not len(bh) == len(bo) == len(hoi) == len(verb) == len(obj):
            raise AnnotationError(f"{path}: image {name}: boxes_h, boxes_o, hoi, verb, object differ in length")
        _check_pair_classes(path, name, labelspace, hoi, verb, obj)
        per_image.append({"boxes_h": B.convert(bh, box_format, "coord"),
                          "boxes_o": B.convert(bo, box_format, "coord"),
                          "hoi": hoi, "verb": verb, "object": obj})
    ann = Annotations.from_lists(d["filenames"], sizes.astype(np.int64), per_image, labelspace.name)
    return check_split(path, ann)


def read_qpic_json(path, labelspace: LabelSpace, box_format: str = "pixel1",
                   sizes: dict[str, tuple[int, int]] | None = None,
                   image_root: str | Path | None = None) -> Annotations:
    """Read PPDM / QPIC ``trainval_hico.json`` / ``test_hico.json``.

    The format has no image sizes: they come from ``sizes`` (file name -> (w, h)), else
    from the image headers under ``image_root``, else stay -1.
    """
    return _from_qpic(_load_json(path), path, labelspace, box_format, sizes, image_root)


def _from_qpic(d, path, labelspace: LabelSpace, box_format: str, sizes, image_root) -> Annotations:
    if not isinstance(d, list):
        raise AnnotationError(f"{path}: expected a list of images (QPIC format)")
    names, wh, per_image = [], [], []
    for i, img in enumerate(d):
        if not isinstance(img, dict) or "file_name" not in img:
            raise AnnotationError(f"{path}: entry {i} is not an object with a 'file_name'")
        name = img["file_name"]
        try:
            objs = img["annotations"]
            cats = _ints([o["category_id"] for o in objs])
            bx = np.asarray([o["bbox"] for o in objs], np.float64).reshape(-1, 4)
            rels = img.get("hoi_annotation", [])
            sub = _ints([r["subject_id"] for r in rels])
            ob = _ints([r["object_id"] for r in rels])
            verb = _ints([r["category_id"] for r in rels]) - 1
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AnnotationError(f"{path}: image {name}: malformed entry ({e!r})") from e
        if len(rels) and (sub.min() < 0 or ob.min() < 0 or max(sub.max(), ob.max()) >= len(objs)):
            raise AnnotationError(f"{path}: image {name}: a subject_id or object_id is outside its "
                                  f"{len(objs)} boxes")
        obj = labelspace.object_from_coco(cats, "coco91")
        if np.any(obj < 0):
            raise AnnotationError(f"{path}: image {name}: COCO category id {cats[obj < 0][0]} "
                                  f"has no object in label space {labelspace.name!r}")
        o = obj[ob]
        try:
            hoi = np.array([labelspace.class_index(v, oo) for v, oo in zip(verb, o)], np.int64)
        except KeyError as e:
            raise AnnotationError(f"{path}: image {name}: (verb, object) {e.args[0]} is not an HOI class "
                                  f"of {labelspace.name!r}") from e
        if np.any(obj[sub] != labelspace.human):
            raise AnnotationError(f"{path}: image {name}: a subject box is not a person")
        names.append(name)
        wh.append(_size_of(name, sizes, image_root, path))
        per_image.append({"boxes_h": B.convert(bx[sub], box_format, "coord"),
                          "boxes_o": B.convert(bx[ob], box_format, "coord"),
                          "hoi": hoi, "verb": verb, "object": o})
    return check_split(path, Annotations.from_lists(names, wh, per_image, labelspace.name))


def _size_of(name, sizes, image_root, source) -> tuple[int, int]:
    if sizes is not None and name in sizes:
        return tuple(sizes[name])
    if image_root is not None:  # a name from the annotation file is read only inside the images folder
        try:
            return image_size(inside(image_root, name, source=str(source)))
        except UnsafeNameError as e:
            raise AnnotationError(str(e)) from None
    return (-1, -1)


def read_json_annotations(path, labelspace: LabelSpace, box_format: str = "pixel1", sizes=None,
                          image_root=None) -> Annotations:
    """Either JSON format, told apart by the top-level type (the file parsed once): a list is
    QPIC's (``sizes``, ``image_root``: see :func:`read_qpic_json`), an object fredzzhang's."""
    d = _load_json(path)
    if isinstance(d, list):
        return _from_qpic(d, path, labelspace, box_format, sizes, image_root)
    return _from_hicodet(d, path, labelspace, box_format)


def hico_test_annotations() -> Annotations:
    """The 9,658 HICO-DET test images shipped as package data."""
    from .labelspace import hico_det
    ref = resources.files("hoidata") / "data" / "hico_det" / "instances_test2015.json.gz"
    with resources.as_file(ref) as p:
        return read_hicodet_json(p, hico_det())


def write_hicodet_json(ann: Annotations, labelspace: LabelSpace, path) -> None:
    """Write ``ann`` in fredzzhang/hicodet's format (boxes back in ``pixel1``)."""
    out = {"filenames": ann.file_names, "size": ann.sizes.tolist(), "annotation": [],
           "empty": ann.empty_images.tolist(), "objects": list(labelspace.objects),
           "verbs": list(labelspace.verbs),
           "correspondence": [[c, o, v] for c, (v, o) in enumerate(labelspace.hoi)],
           "rare": np.flatnonzero(labelspace.rare).tolist(),
           "non_rare": np.flatnonzero(~labelspace.rare).tolist()}
    for i in range(len(ann)):
        p = ann.pairs_of(i)
        out["annotation"].append({
            "boxes_h": B.convert(p["boxes_h"], "coord", "pixel1").tolist(),
            "boxes_o": B.convert(p["boxes_o"], "coord", "pixel1").tolist(),
            "hoi": p["hoi"].tolist(), "object": p["object"].tolist(), "verb": p["verb"].tolist()})
    write_json_atomic(path, out, indent=None)
