"""The official evaluation's detection files: export predictions to them, read them back.

ho-rcnn's ``eval_one.m`` reads one of two layouts from a folder:

- ``obj`` (one file per object): ``detections_XX.mat`` for each object, ``XX`` its 1-based
  index among the 80 COCO classes (``01`` person ... ``80`` toothbrush). Each holds
  ``all_boxes``, a cell array ``[k, N]``: row ``a`` is the ``a``-th HOI class of that object
  in the official class order (an object's classes are contiguous there), column ``j`` the
  ``j``-th test image in the annotation order (``list_test``).
- ``all`` (one file): ``detections.mat`` with ``all_boxes`` ``[C, N]``, row ``c`` HOI class
  ``c``.

Each cell is a double matrix ``[n, 9]``: human box, object box (``x1 y1 x2 y2``, 0-based
pixel indices: the official code adds 1, see :mod:`hoidata.boxes`) and score; an image
without detections of the class has an empty cell. Rows keep the predictions' order
within an image, so score ties break as they do in :mod:`hoidata.evaluation`.

Files are MATLAB v5 MAT-files with one compressed variable, written here directly: a
general writer (``scipy.io.savemat``) spends about a minute of Python per file on HICO-DET's
5.8 million cells; this one writes the same bytes (tests compare them) in seconds. Reading
back uses ``scipy.io.loadmat`` (an optional dependency). An export folder also carries
``export.json`` (label space, layout, counts, versions); MATLAB ignores it.
"""

from __future__ import annotations

import glob
import json
import shutil
import struct
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

from hoicore import __version__
from hoicore.errors import HoiError, InputError
from hoicore.files import scipy_io as _scipy_io
from hoicore.lock import exclusive

from . import boxes as B
from .ground_truth import load_split
from .labelspace import LabelSpace
from .predictions import Predictions, PredictionsError, labelspace_of, read_predictions


class ExportExistsError(HoiError, FileExistsError):
    """The export folder exists (an earlier export without --overwrite, or another folder)."""


LAYOUTS = ("obj", "all")
ALL_FILE = "detections.mat"
COLUMNS = 9  # human box, object box, score
_EMPTY = np.zeros((0, COLUMNS))


# MAT-file v5 constants (MathWorks, "MAT-File Format", chapter 1).
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_DOUBLE, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 9, 14, 15
_MX_CELL, _MX_DOUBLE = 1, 6
_MAX_ELEMENT = 2**32 - 1  # a v5 element's byte count is a uint32


def _matrix_header(mx_class: int, shape: tuple[int, int], name: bytes, body: int) -> bytes:
    """miMATRIX tag, array flags, dimensions and name of an array whose data take ``body`` bytes."""
    if name:
        pad = -len(name) % 8
        name_el = struct.pack("<II", _MI_INT8, len(name)) + name + bytes(pad)
    else:  # an empty name is a small data element of zero bytes
        name_el = struct.pack("<HHI", _MI_INT8, 0, 0)
    rest = struct.pack("<IIII", _MI_UINT32, 8, mx_class, 0) + struct.pack("<IIii", _MI_INT32, 8, *shape) + name_el
    size = len(rest) + body
    if size > _MAX_ELEMENT:
        raise InputError(f"{size:,} bytes do not fit one MATLAB v5 variable; export fewer detections "
                         "(e.g. the top-scoring ones of each image) or use the 'obj' layout")
    return struct.pack("<II", _MI_MATRIX, size) + rest


def _double_matrix(m: np.ndarray) -> bytes:
    """A cell holding float64 [n, 9]: miMATRIX element, data column-major."""
    data = np.ascontiguousarray(m, dtype="<f8").T.tobytes()  # rows of m.T = columns of m
    tag = struct.pack("<HHI", _MI_DOUBLE, 0, 0) if not data else struct.pack("<II", _MI_DOUBLE, len(data))
    return _matrix_header(_MX_DOUBLE, m.shape, b"", len(tag) + len(data)) + tag + data


def _write_cell_mat(path, name: str, cells: np.ndarray, compress: bool = True) -> None:
    """Write a MAT-file v5 holding one variable: the [k, N] cell array ``cells`` of float64
    matrices, each with ``COLUMNS`` columns (a shared empty one where a cell is empty)."""
    empty = _double_matrix(_EMPTY)
    parts = [empty if c is _EMPTY else _double_matrix(c) for c in cells.ravel(order="F")]  # column-major
    header = _matrix_header(_MX_CELL, cells.shape, name.encode("ascii"), sum(map(len, parts)))
    description = f"MATLAB 5.0 MAT-file, written by hoi-distill {__version__}".encode("ascii")
    file_header = description.ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    with open(path, "wb") as f:
        f.write(file_header)
        if not compress:
            f.write(header)
            f.writelines(parts)
            return
        z = zlib.compressobj()
        chunks = [z.compress(header)]
        for i in range(0, len(parts), 65536):  # keeps the uncompressed bytes out of memory
            chunks.append(z.compress(b"".join(parts[i:i + 65536])))
        chunks.append(z.flush())
        size = sum(map(len, chunks))
        if size > _MAX_ELEMENT:
            raise InputError(f"{path}: {size:,} compressed bytes do not fit one MATLAB v5 variable")
        f.write(struct.pack("<II", _MI_COMPRESSED, size))
        f.writelines(chunks)


def object_file(coco80_index: int) -> str:
    """File name of the object with 0-based COCO-80 index ``coco80_index``."""
    return f"detections_{coco80_index + 1:02d}.mat"


def object_files(labelspace: LabelSpace) -> dict[str, np.ndarray]:
    """``{file name: int64 [k] HOI classes in row order}`` of the ``obj`` layout.

    Raises ValueError when the label space has no COCO-80 map or an object's classes are
    not contiguous (``eval_one.m`` finds a class's row as its offset from the object's first).
    """
    if not labelspace.coco80_to_object:
        raise InputError(f"label space {labelspace.name!r} has no COCO-80 object map, which the 'obj' "
                         "layout numbers its files by; use the 'all' layout")
    unmapped = [labelspace.objects[o] for o in range(labelspace.num_objects)
                if o not in labelspace.coco80_to_object and len(labelspace.classes_of_object(o))]
    if unmapped:
        raise InputError(f"object {unmapped[0]!r} of label space {labelspace.name!r} has no COCO-80 index, so the "
                         f"'obj' layout has no file for its classes ({len(unmapped)} such object(s)); "
                         "use the 'all' layout")
    files = {}
    for k, obj in enumerate(labelspace.coco80_to_object):
        if obj < 0:
            continue
        classes = labelspace.classes_of_object(obj)
        if len(classes) == 0:
            continue
        if np.any(np.diff(classes) != 1):
            raise InputError(f"the HOI classes of object {labelspace.objects[obj]!r} are not contiguous, "
                             "which the 'obj' layout needs; use the 'all' layout")
        files[object_file(k)] = classes
    return files


def all_boxes(image_names: list[str], pred: Predictions, num_classes: int, *,
              ignore_unknown_images: bool = False, source: str = "predictions") -> np.ndarray:
    """object [C, N] cell array: cell (c, j) is float64 [n, 9] (pixel0 boxes, score) of class c
    on image ``image_names[j]``, rows in the predictions' order."""
    pred.validate(num_classes, source)
    img = pred.images_in(image_names, ignore_unknown_images=ignore_unknown_images, source=source)
    unknown = img < 0
    keep = np.flatnonzero(~unknown)
    rows = np.concatenate([B.convert(pred.boxes_h[keep], pred.box_format, "pixel0"),
                           B.convert(pred.boxes_o[keep], pred.box_format, "pixel0"),
                           pred.score[keep, None]], axis=1)
    img, hoi = img[keep], pred.hoi[keep]
    order = np.lexsort((np.arange(len(keep)), img, hoi))
    key = hoi[order] * len(image_names) + img[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(key)]
    cells = np.empty((num_classes, len(image_names)), dtype=object)
    cells.fill(_EMPTY)  # one shared empty matrix: MATLAB reads each as an empty cell
    for s, e in zip(starts.tolist(), ends.tolist()):
        c, j = divmod(int(key[s]), len(image_names))
        cells[c, j] = rows[order[s:e]]
    return cells


def export(out, image_names: list[str], pred: Predictions, labelspace: LabelSpace, *, layout: str = "obj",
           overwrite: bool = False, ignore_unknown_images: bool = False, source: str = "predictions") -> Path:
    """Write ``pred`` as the official evaluation's detection files into folder ``out``.

    The folder is written beside ``out`` under a temporary name and renamed when complete, so
    ``out`` never holds a partial export; one export at a time holds ``out`` (``OUT.lock``,
    :mod:`hoicore.lock`). Returns ``out``.
    """
    with exclusive(Path(out).absolute(), what="export-mat"):
        return _export(Path(out), image_names, pred, labelspace, layout, overwrite, ignore_unknown_images, source)


def _export(out: Path, image_names: list[str], pred: Predictions, labelspace: LabelSpace, layout: str,
            overwrite: bool, ignore_unknown_images: bool, source: str) -> Path:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not (out / "export.json").is_file():  # never delete what we did not write
        raise ExportExistsError(f"{out} exists and is not an export of this command (no export.json); "
                              "choose another --output")
    plan = object_files(labelspace) if layout == "obj" else {ALL_FILE: np.arange(labelspace.num_classes)}
    cells = all_boxes(image_names, pred, labelspace.num_classes,
                      ignore_unknown_images=ignore_unknown_images, source=source)
    for left in out.parent.glob(f".{glob.escape(out.name)}.*.wip"):  # killed exports' (we hold the lock)
        shutil.rmtree(left, ignore_errors=True)
    wip = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.wip")
    wip.mkdir(parents=True)
    try:
        for name, classes in plan.items():
            _write_cell_mat(wip / name, "all_boxes", cells[classes])
        provenance = {
            "format": "ho-rcnn eval_one.m detection files", "layout": layout, "files": sorted(plan),
            "labelspace": labelspace.name, "labelspace_fingerprint": labelspace.fingerprint,
            "images": len(image_names), "first_image": image_names[0] if image_names else None,
            "detections": int(sum(len(c) for c in cells.flat)), "box_convention": "pixel0",
            "source": source, "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (wip / "export.json").write_text(json.dumps(provenance, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        wip.rename(out)
    finally:
        shutil.rmtree(wip, ignore_errors=True)
    return out


def read(path, image_names: list[str], labelspace: LabelSpace) -> Predictions:
    """Predictions (``pixel0``) from detection files, read the way ``eval_one.m`` reads them.

    ``path``: a folder (``detections.mat``, else one ``detections_XX.mat`` per object) or a
    ``detections.mat`` file. Columns are ``image_names`` in order; a file whose shape does
    not fit the label space and images is refused, naming the file.
    """
    sio = _scipy_io()
    path = Path(path)
    if path.is_file():
        plan = {path: np.arange(labelspace.num_classes)}
    elif (path / ALL_FILE).is_file():
        plan = {path / ALL_FILE: np.arange(labelspace.num_classes)}
    elif path.is_dir():
        try:
            plan = {path / name: classes for name, classes in object_files(labelspace).items()}
        except ValueError as e:
            raise PredictionsError(f"{path}: no {ALL_FILE}, and {e}") from e
        missing = [p.name for p in plan if not p.is_file()]
        if missing:
            raise PredictionsError(f"{path}: no {ALL_FILE} and {len(missing)} of the {len(plan)} per-object "
                                   f"files are missing (first: {missing[0]})")
    else:
        raise PredictionsError(f"{path}: no such file or folder")
    parts = []  # (class, image, rows [n, 9]) in eval_one's order: class, then image
    for file, classes in plan.items():
        try:
            cells = sio.loadmat(file, variable_names=["all_boxes"])["all_boxes"]
        except NotImplementedError as e:  # scipy reads up to v7; v7.3 files are HDF5
            raise PredictionsError(f"{file}: a MATLAB v7.3 file, which cannot be read here; in MATLAB, "
                                   "load it and save it again with save(..., '-v7')") from e
        except (sio.matlab.MatReadError, KeyError, ValueError, OSError, TypeError, IndexError) as e:
            raise PredictionsError(f"{file}: not a MATLAB file with an 'all_boxes' cell array ({e!r})") from e
        if cells.dtype != object or cells.shape != (len(classes), len(image_names)):
            raise PredictionsError(f"{file}: 'all_boxes' is {cells.dtype} {cells.shape}; expected a cell array "
                                   f"({len(classes)} classes x {len(image_names)} images)")
        for a, j in zip(*np.nonzero(np.vectorize(np.size, otypes=[np.int64])(cells))):
            try:
                det = np.asarray(cells[a, j], dtype=np.float64)
            except (ValueError, TypeError):
                det = np.zeros(0)  # not numbers: refused just below
            if det.ndim != 2 or det.shape[1] < COLUMNS:
                raise PredictionsError(f"{file}: cell ({a + 1}, {j + 1}) of class {classes[a]} on image "
                                       f"{image_names[j]} is {det.shape}; expected [n, {COLUMNS}]")
            parts.append((int(classes[a]), int(j), det[:, :COLUMNS]))
    parts.sort(key=lambda p: (p[0], p[1]))
    if not parts:
        return Predictions.from_arrays(image_names, [], np.zeros((0, 4)), np.zeros((0, 4)), [], [], "pixel0")
    rows = np.concatenate([p[2] for p in parts])
    counts = [len(p[2]) for p in parts]
    return Predictions.from_arrays(image_names, np.repeat([p[1] for p in parts], counts), rows[:, 0:4],
                                   rows[:, 4:8], np.repeat([p[0] for p in parts], counts), rows[:, 8], "pixel0")


def export_file(predictions, out, *, annotations="hico_det", labelspace: str | LabelSpace | None = None,
                layout: str = "obj", box_format: str | None = None, overwrite: bool = False,
                ignore_unknown_images: bool = False, split: str = "test") -> dict:
    """Export a predictions file (see :mod:`hoidata.predictions`) for the official evaluation;
    columns follow the image order of ``annotations`` (``'hico_det'``: the bundled test set,
    in the official ``list_test`` order; an ``anno_bbox.mat``: its ``split``). ``labelspace``:
    None for the one the predictions record (else HICO-DET's). Returns the export's
    ``export.json`` content."""
    pred = read_predictions(predictions, box_format)
    gt, ls = load_split(annotations, labelspace_of(pred, labelspace, str(predictions)), split)
    out = export(out, gt.file_names, pred, ls, layout=layout, overwrite=overwrite,
                 ignore_unknown_images=ignore_unknown_images, source=str(predictions))
    return json.loads((out / "export.json").read_text())
