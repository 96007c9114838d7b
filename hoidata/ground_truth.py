"""Ground truth from any file a user has: the entry point above the format readers.

:mod:`hoidata.annotations` holds the in-memory form and the JSON readers,
:mod:`hoidata.hico_mat` HICO-DET's ``.mat`` files (built on it); this module picks the
reader by what the file is, and gives an evaluation its ground truth and label space.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .annotations import AnnotationError, Annotations, hico_test_annotations, read_json_annotations
from .hico_mat import compare_with_bundled, read_anno_bbox
from .labelspace import LabelSpace, LabelSpaceError, hico_det

log = logging.getLogger(__name__)


def read_annotations(path, labelspace: LabelSpace, box_format: str = "pixel1", **kw) -> Annotations:
    """Read any of the three formats: a ``.mat`` file is ``anno_bbox.mat`` (split ``kw['split']``,
    ``'test'`` by default); JSON formats are told apart by the top-level type (parsed once)."""
    if Path(path).suffix == ".mat":
        if box_format != "pixel1":
            raise AnnotationError(f"{path}: anno_bbox.mat holds 1-based boxes by definition; "
                                  f"drop box_format {box_format!r}")
        return read_anno_bbox(path, labelspace, kw.get("split", "test"))
    return read_json_annotations(path, labelspace, box_format, kw.get("sizes"), kw.get("image_root"))


def load_split(annotations, labelspace: str | LabelSpace = "hico_det",
               split: str = "test") -> tuple[Annotations, LabelSpace]:
    """Ground truth and label space of an evaluation: ``annotations`` is a file in any
    format or ``'hico_det'`` (the bundled test set); ``labelspace`` a name, file or object;
    ``split`` the split of an ``anno_bbox.mat``. The test split of an ``anno_bbox.mat`` in
    the hico_det label space is compared with the bundled test set, in one log line."""
    ls = labelspace if isinstance(labelspace, LabelSpace) else LabelSpace.load(labelspace)
    if str(annotations) != "hico_det":
        ann = read_annotations(annotations, ls, split=split)
        if Path(annotations).suffix == ".mat" and split == "test" and ls.fingerprint == hico_det().fingerprint:
            report = compare_with_bundled(ann)
            (log.info if report.equal else log.warning)("%s: %s", annotations, report.line(ls))
        return ann, ls
    if ls.fingerprint != hico_det().fingerprint:
        raise LabelSpaceError(f"the bundled HICO-DET test set ('hico_det') is labelled in the hico_det label "
                              f"space, not in {ls.name!r} (the label space given, or the predictions' own): pass the "
                              "annotations of that label space with --annotations FILE")
    return hico_test_annotations(), ls
