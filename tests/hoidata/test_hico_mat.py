"""HICO-DET's own files: anno_bbox.mat as ground truth, anno.mat as Known-Object image sets.

The files are written here in the official layout with scipy.io.savemat: struct arrays as
MATLAB stores them (a lone element is a 1x1 struct, written from a plain dict; several are
a 1xk struct array), 1-based inclusive boxes, invisible HOIs without boxes."""

import json
import logging

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from conftest import TINY

from hoidata.annotations import AnnotationError, Annotations, hico_test_annotations
from hoidata.evaluation import KO_IMAGE_LABELS, KO_STAND_IN, THRESHOLDS, evaluate, evaluate_file, format_table
from hoidata.ground_truth import load_split, read_annotations
from hoidata.hico_mat import compare_with_bundled, read_anno_bbox, read_image_labels
from hoidata.labelspace import hico_det
from hoidata.predictions import Predictions, write_predictions
from hoidata.reference_eval import reference_evaluate

# tiny label space: class 0 hold ball, 1 kick ball, 2 no_interaction ball, 3 hold cup
H1, H2, BALL, CUP = [1, 1, 10, 10], [30, 1, 45, 20], [21, 21, 40, 40], [50, 50, 60, 70]  # pixel1
NAN = float("nan")


def hoi(id_, humans=(), objects=(), connection=(), invis=0):
    return {"id": id_, "humans": list(humans), "objects": list(objects), "connection": list(connection),
            "invis": invis}


def official_images():
    """t1: two pairs of hold ball (two humans, one ball), hold cup, kick ball invisible (with
    boxes, which eval_one.m ignores all the same); t2: hold ball invisible, as HICO-DET
    writes it (no boxes), so no pair at all; t3: hold cup."""
    return [
        {"filename": "t1.jpg", "size": (100, 80),
         "hoi": [hoi(1, [H1, H2], [BALL], [[1, 1], [2, 1]]), hoi(4, [H1], [CUP], [[1, 1]]),
                 hoi(2, [H2], [BALL], [[1, 1]], invis=1)]},
        {"filename": "t2.jpg", "size": (64, 48), "hoi": [hoi(1, invis=1)]},
        {"filename": "t3.jpg", "size": (90, 90), "hoi": [hoi(4, [H2], [CUP], [[1, 1]])]},
    ]


# anno_test rows: HOI classes; columns: list_test, deliberately not the annotation order
LIST_TEST = ["t3.jpg", "t1.jpg", "t2.jpg"]
ANNO_TEST = np.array([[0, 1, 1],       # hold ball: ambiguous in t3, positive in t1 and t2 (invisible there)
                      [NAN, 1, -1],    # kick ball
                      [-1, -1, -1],    # no_interaction ball
                      [1, 1, -1.0]])   # hold cup


def struct(records: list[dict], column: bool = False):
    """A struct array as MATLAB writes it: a lone element as a 1x1 struct (a plain dict),
    several as a 1xk (or kx1) struct array."""
    if len(records) == 1:
        return records[0]
    a = np.empty((len(records), 1) if column else (1, len(records)), dtype=[(k, object) for k in records[0]])
    for i, r in enumerate(records):
        for k, v in r.items():
            a[k][np.unravel_index(i, a.shape)] = v
    return a


def empty():
    return np.zeros((0, 0))  # MATLAB's []


def list_action(ls):
    return struct([{"nname": ls.objects[o], "vname": ls.verbs[v], "vname_ing": ls.verbs[v] + "ing"}
                   for v, o in ls.hoi], column=True)


def boxes(bs):
    return struct([dict(zip(("x1", "y1", "x2", "y2"), map(float, b))) for b in bs]) if bs else empty()


def bbox_var(images):
    out = []
    for im in images:
        entries = [{"id": float(h["id"]), "bboxhuman": boxes(h["humans"]), "bboxobject": boxes(h["objects"]),
                    "connection": np.array(h["connection"], float) if h["connection"] else empty(),
                    "invis": float(h["invis"])} for h in im["hoi"]]
        w, h = im["size"]
        out.append({"filename": im["filename"], "size": {"width": float(w), "height": float(h), "depth": 3.0},
                    "hoi": struct(entries) if entries else empty()})
    return struct(out)


def write_anno_bbox(path, ls, test=None, train=None, **override):
    content = {"list_action": list_action(ls)}
    if test is not None:
        content["bbox_test"] = bbox_var(test)
    if train is not None:
        content["bbox_train"] = bbox_var(train)
    content.update(override)
    scipy.io.savemat(path, content)
    return path


def write_anno(path, ls, names=LIST_TEST, labels=ANNO_TEST):
    cells = np.empty((len(names), 1), dtype=object)
    cells[:, 0] = names
    scipy.io.savemat(path, {"anno_test": labels, "list_test": cells, "list_action": list_action(ls)})
    return path


@pytest.fixture
def hico_files(tmp_path, tiny_ls):
    """A folder like hico_20160224_det/: anno_bbox.mat and anno.mat, plus the label space."""
    d = tmp_path / "hico_20160224_det"
    d.mkdir()
    write_anno_bbox(d / "anno_bbox.mat", tiny_ls, test=official_images(),
                    train=[{"filename": "r1.jpg", "size": (10, 10), "hoi": [hoi(3, [H1], [BALL], [[1, 1]])]}])
    write_anno(d / "anno.mat", tiny_ls)
    tiny_ls.save(tmp_path / "ls.json")
    return d


def coord(b):
    return np.asarray(b, float) - [1, 1, 0, 0]


# -- anno_bbox.mat -----------------------------------------------------------------------

def test_reads_one_pair_per_connection_row_of_visible_hois(hico_files, tiny_ls):
    a = read_annotations(hico_files / "anno_bbox.mat", tiny_ls)
    assert a.file_names == ["t1.jpg", "t2.jpg", "t3.jpg"]
    assert a.sizes.tolist() == [[100, 80], [64, 48], [90, 90]]
    assert a.offsets.tolist() == [0, 3, 3, 4]  # t2's only HOI is invisible: no pair, still an image
    assert a.hoi.tolist() == [0, 0, 3, 3] and a.object.tolist() == [0, 0, 1, 1] and a.verb.tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(a.boxes_h, coord([H1, H2, H1, H2]))  # coord, as the JSON readers give
    np.testing.assert_array_equal(a.boxes_o, coord([BALL, BALL, CUP, CUP]))
    train = read_anno_bbox(hico_files / "anno_bbox.mat", tiny_ls, split="train")
    assert train.file_names == ["r1.jpg"] and train.hoi.tolist() == [2]


def test_a_repeated_visible_class_replaces_the_earlier_entry(tmp_path, tiny_ls, caplog):
    """eval_one.m stores gt_all{hoi_id, i} = boxes: the later entry of a class wins."""
    images = official_images()
    images[0]["hoi"].append(hoi(1, [H2], [CUP], [[1, 1]]))
    f = write_anno_bbox(tmp_path / "anno_bbox.mat", tiny_ls, test=images)
    with caplog.at_level(logging.WARNING):
        a = read_anno_bbox(f, tiny_ls)
    p = a.pairs_of(0)
    assert p["hoi"].tolist() == [0, 3]
    np.testing.assert_array_equal(p["boxes_o"][0], coord(CUP))
    assert "1 visible hoi entries repeat a class" in caplog.text and "hold ball" in caplog.text


def _set(path, value):
    """Edit official_images() at a path of keys and indices."""
    def edit(images):
        *head, last = path
        node = images
        for k in head:
            node = node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set([0, "hoi", 0, "connection", 1], [3, 1]),
     r"anno_bbox.mat: image t1.jpg, hoi\(1\).connection: row 2 names bboxhuman\(3\), but there are 2"),
    (_set([0, "hoi", 1, "id"], 9), r"image t1.jpg, hoi\(2\).id is 9; HOI classes are 1..4"),
    (_set([2, "hoi", 0, "id"], 1.5), r"image t3.jpg, hoi\(1\).id is 1.5; expected a whole number"),
    (_set([2, "hoi", 0, "humans", 0], [20, 5, 19, 9]), r"image t3.jpg, pair 0: boxes_h \[20.0, 5.0, 19.0, 9.0\]"),
    (_set([1, "filename"], "t1.jpg"), "image t1.jpg is listed more than once"),
    (_set([1, "size"], (64, 47.5)), r"image t2.jpg, size.height is 47.5; expected a whole number"),
])
def test_bad_entries_name_file_image_and_field(tmp_path, tiny_ls, edit, message):
    images = official_images()
    edit(images)
    f = write_anno_bbox(tmp_path / "anno_bbox.mat", tiny_ls, test=images)
    with pytest.raises(AnnotationError, match=message):
        read_annotations(f, tiny_ls)


def test_missing_fields_and_variables_are_named(tmp_path, tiny_ls):
    f = tmp_path / "anno_bbox.mat"
    images = bbox_var(official_images())
    images["hoi"][0, 2] = {k: v for k, v in images["hoi"][0, 2].items() if k != "connection"}
    write_anno_bbox(f, tiny_ls, bbox_test=images)
    with pytest.raises(AnnotationError, match=r"image t3.jpg, hoi\(1\): no field 'connection'"):
        read_anno_bbox(f, tiny_ls)
    write_anno_bbox(f, tiny_ls, train=official_images())
    with pytest.raises(AnnotationError, match=r"no variable 'bbox_test' \(it holds .*bbox_train.*pass --split train"):
        read_anno_bbox(f, tiny_ls)
    ls = dict(TINY, verbs=["grab", "kick", "no_interaction"])
    write_anno_bbox(f, type(tiny_ls).from_dict(ls), test=official_images())
    with pytest.raises(AnnotationError, match=r"list_action\(1\) is \(grab, ball\), but HOI class 0 of label space "
                                              r"'tiny' is \(hold, ball\)"):
        read_anno_bbox(f, tiny_ls)
    f.write_bytes(b"not a MAT-file at all" * 10)
    with pytest.raises(AnnotationError, match="not a readable MATLAB file"):
        read_annotations(f, tiny_ls)


# -- anno.mat and Known-Object -----------------------------------------------------------

def test_image_labels_follow_the_annotations_order(hico_files, tiny_ls):
    a = read_anno_bbox(hico_files / "anno_bbox.mat", tiny_ls)
    labels = read_image_labels(hico_files / "anno.mat", a.file_names, tiny_ls)
    # objects ball, cup, person; t3's ball is only ambiguous (0), its kick ball unknown (NaN)
    assert labels.dtype == bool and labels.tolist() == [[True, True, False], [True, False, False],
                                                        [False, True, False]]


@pytest.mark.parametrize("names, labels, message", [
    (["t3.jpg", "t1.jpg"], ANNO_TEST[:, :2], "image t2.jpg of the annotations is not in list_test"),
    (LIST_TEST + ["t9.jpg"], np.c_[ANNO_TEST, np.ones(4)], "list_test names image t9.jpg, which the annotations lack"),
    (LIST_TEST, np.where(np.arange(12).reshape(4, 3) == 6, 2.0, ANNO_TEST),
     r"anno_test\(3, 1\) \(HOI class 2, image t3.jpg\) is 2.0; expected 1, 0, -1 or NaN"),
    (LIST_TEST, ANNO_TEST[:3], r"anno_test is float64 \(3, 3\); expected numbers \[4 HOI classes, 3 images"),
])
def test_image_labels_refuse_what_does_not_fit(tmp_path, hico_files, tiny_ls, names, labels, message):
    a = read_anno_bbox(hico_files / "anno_bbox.mat", tiny_ls)
    f = write_anno(tmp_path / "anno.mat", tiny_ls, names, labels)
    with pytest.raises(AnnotationError, match=message):
        read_image_labels(f, a.file_names, tiny_ls)


def _ap(points: int, precision: float) -> float:
    ap = 0.0
    for k in range(len(THRESHOLDS)):
        ap = ap + (precision if k < points else 0.0) / 11
    return ap


def _predictions():
    """hold ball: a false positive in t2 (its hold ball is invisible, yet positive in anno_test),
    a hit in t1, a false positive in t3 (ball only ambiguous there); hold cup: a miss in t2."""
    return Predictions.from_arrays(["t3.jpg", "t2.jpg", "t1.jpg"], [0, 1, 2, 1], [H1, H1, H1, H1],
                                   [BALL, BALL, BALL, CUP], [0, 0, 0, 3], [0.95, 0.9, 0.8, 0.7], "pixel1")


def test_the_two_known_object_definitions_give_different_map(hico_files, tiny_ls):
    gt = read_anno_bbox(hico_files / "anno_bbox.mat", tiny_ls)
    labels = read_image_labels(hico_files / "anno.mat", gt.file_names, tiny_ls)
    p = _predictions()
    stand_in, official = evaluate(gt, p, tiny_ls), evaluate(gt, p, tiny_ls, image_labels=labels)
    # rec reaches 0.5 (one of the two hold-ball pairs): 6 of the 11 thresholds
    assert official.ap["default"][0] == stand_in.ap["default"][0] == _ap(6, 1 / 3)  # FP, FP, TP
    assert stand_in.ap["known_object"][0] == _ap(6, 1.0)   # t2 and t3 hold no ball pair: TP alone
    assert official.ap["known_object"][0] == _ap(6, 0.5)   # t2 is a ball image by anno.mat: FP, TP
    np.testing.assert_array_equal(official.ap["known_object"],
                                  reference_evaluate(gt, p, tiny_ls, known_object=True, image_labels=labels))
    s, t = official.summary(), stand_in.summary()
    assert s["known_object"]["full"] == pytest.approx(_ap(6, 0.5) / 2)  # classes 0 and 3 (AP 0) have pairs
    assert t["known_object"]["full"] == pytest.approx(_ap(6, 1.0) / 2)
    assert (s["known_object_images"], t["known_object_images"]) == (KO_IMAGE_LABELS, KO_STAND_IN)
    assert "Known-Object images: anno.mat image labels" in format_table(official)
    assert json.loads(official.summary_json())["known_object_images"] == KO_IMAGE_LABELS


def test_image_labels_must_cover_every_ground_truth_pair(hico_files, tiny_ls):
    """eval_one.m asserts that no image outside the Known-Object set holds ground truth."""
    gt = read_anno_bbox(hico_files / "anno_bbox.mat", tiny_ls)
    labels = read_image_labels(hico_files / "anno.mat", gt.file_names, tiny_ls)
    labels[0, 0] = False
    with pytest.raises(AnnotationError, match="image t1.jpg holds a ground-truth pair of 'ball', but its image labels"):
        evaluate(gt, _predictions(), tiny_ls, image_labels=labels)
    with pytest.raises(AnnotationError, match=r"expected bool \[3 images, 3 objects\]"):
        evaluate(gt, _predictions(), tiny_ls, image_labels=labels[:, :2])


def test_evaluate_file_finds_anno_mat_beside_anno_bbox(tmp_path, hico_files, tiny_ls):
    f = tmp_path / "p.json"
    write_predictions(_predictions(), f)
    ls = tmp_path / "ls.json"
    found = evaluate_file(hico_files / "anno_bbox.mat", f, labelspace=ls)
    assert found.known_object_images == KO_IMAGE_LABELS and found.ap["known_object"][0] == _ap(6, 0.5)
    none = evaluate_file(hico_files / "anno_bbox.mat", f, labelspace=ls, image_labels=None)
    assert none.known_object_images == KO_STAND_IN and none.ap["known_object"][0] == _ap(6, 1.0)


def test_cli_eval_predictions_with_image_labels(tmp_path, hico_files):
    from hoi.cli import main

    f = tmp_path / "p.json"
    write_predictions(_predictions(), f)
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    (alone / "anno_bbox.mat").write_bytes((hico_files / "anno_bbox.mat").read_bytes())
    common = ["eval-predictions", "--labelspace", str(tmp_path / "ls.json"), "--predictions", str(f)]
    run = lambda *a: CliRunner().invoke(main, [*common, *a])  # noqa: E731
    auto = run("--annotations", str(hico_files / "anno_bbox.mat"), "--json")
    stand_in = run("--annotations", str(alone / "anno_bbox.mat"), "--json")
    given = run("--annotations", str(alone / "anno_bbox.mat"), "--image-labels", str(hico_files / "anno.mat"))
    assert auto.exit_code == stand_in.exit_code == given.exit_code == 0, auto.output + stand_in.output + given.output
    a, s = json.loads(auto.stdout), json.loads(stand_in.stdout)
    assert (a["known_object_images"], s["known_object_images"]) == (KO_IMAGE_LABELS, KO_STAND_IN)
    assert a["known_object"]["full"] == pytest.approx(_ap(6, 0.5) / 2)
    assert s["known_object"]["full"] == pytest.approx(_ap(6, 1.0) / 2)
    assert a["default"] == s["default"]
    assert "Known-Object images: anno.mat image labels" in given.stdout
    assert f"{100 * _ap(6, 0.5) / 2:8.2f}" in given.stdout.splitlines()[3]  # the known_object row
    train = run("--annotations", str(hico_files / "anno_bbox.mat"), "--split", "train")
    assert train.exit_code != 0 and "no variable 'anno_train'" in train.output


# -- against the bundled test set ------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    return hico_test_annotations()


def _as_images(ann: Annotations, images) -> list[dict]:
    """The official layout of some images of ``ann``: one hoi entry per class, its distinct
    human and object boxes, connection rows in pair order."""
    out = []
    for i in images:
        p = ann.pairs_of(i)
        entries = []
        for c in dict.fromkeys(p["hoi"].tolist()):
            k = p["hoi"] == c
            bh, bo = (np.asarray(p[f], float)[k] + [1, 1, 0, 0] for f in ("boxes_h", "boxes_o"))
            hu, hi = np.unique(bh, axis=0, return_inverse=True)
            ou, oi = np.unique(bo, axis=0, return_inverse=True)
            entries.append(hoi(c + 1, hu.tolist(), ou.tolist(), np.c_[hi.ravel(), oi.ravel()] + 1))
        entries.append(hoi(1, invis=1))
        out.append({"filename": ann.file_names[i], "size": tuple(ann.sizes[i]), "hoi": entries})
    return out


def test_official_layout_of_bundled_images_reads_back_equal(tmp_path, bundled, caplog):
    ls = hico_det()
    f = write_anno_bbox(tmp_path / "anno_bbox.mat", ls, test=_as_images(bundled, range(120)))
    a = read_anno_bbox(f, ls)
    subset = Annotations.from_lists(bundled.file_names[:120], bundled.sizes[:120],
                                    [bundled.pairs_of(i) for i in range(120)], ls.name)
    report = compare_with_bundled(a, subset)
    assert report.equal and a.num_pairs == subset.num_pairs > 300
    assert report.line() == f"equals the bundled HICO-DET test set (120 images, {a.num_pairs} ground-truth pairs)"
    with caplog.at_level(logging.INFO):
        load_split(f, ls)
    assert "differs from the bundled HICO-DET test set" in caplog.text
    assert "bundled images missing: 9,538" in caplog.text


def test_comparison_names_what_differs(bundled):
    ls = hico_det()
    full = compare_with_bundled(bundled, bundled)
    assert full.equal and full.line() == ("equals the bundled HICO-DET test set (9,658 images, "
                                          "33,405 ground-truth pairs)")
    per = [bundled.pairs_of(i) for i in range(len(bundled))]
    per[0] = {k: v[1:] for k, v in per[0].items()}  # one pair of the first image lost
    names = bundled.file_names[:-1] + ["HICO_test2015_99999999.jpg"]
    changed = Annotations.from_lists(names, bundled.sizes, per, ls.name)
    r = compare_with_bundled(changed, bundled)
    c = int(bundled.hoi[0])
    assert not r.equal and r.differing == [(bundled.file_names[0], c)]
    assert r.missing_images == [bundled.file_names[-1]] and r.extra_images == ["HICO_test2015_99999999.jpg"]
    line = r.line(ls)
    assert f"(image, HOI) with other pairs: 1 (first: {bundled.file_names[0]}, {ls.class_name(c)})" in line
    assert f"bundled images missing: 1 (first: {bundled.file_names[-1]})" in line
    assert "images not in the bundled set: 1 (first: HICO_test2015_99999999.jpg)" in line
