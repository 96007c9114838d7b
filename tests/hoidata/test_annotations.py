"""Label spaces and the two annotation formats."""

import json

import numpy as np
import pytest

from hoidata import boxes as B
from hoidata.annotations import AnnotationError, read_hicodet_json, read_qpic_json
from hoidata.ground_truth import read_annotations
from hoidata.labelspace import LabelSpace, LabelSpaceError, hico_det

# Two images in both formats, written by hand. HICO objects: person = 49, bicycle = 9,
# cup = 26; COCO category ids: person 1, bicycle 2, cup 47. Verbs: ride = 76 (1-based 77),
# hold = 36 (37), no_interaction = 57 (58).
HICODET = {
    "filenames": ["HICO_test2015_00000001.jpg", "HICO_test2015_00000002.jpg", "HICO_test2015_00000003.jpg"],
    "size": [[640, 480], [500, 375], [320, 240]],
    "annotation": [
        {"boxes_h": [[10, 20, 110, 220], [300, 40, 380, 300]], "boxes_o": [[5, 150, 200, 330], [5, 150, 200, 330]],
         "hoi": [None, None], "object": [9, 9], "verb": [76, 57]},
        {"boxes_h": [[50, 60, 150, 360]], "boxes_o": [[120, 100, 140, 130]], "hoi": [None], "object": [26],
         "verb": [36]},
        {"boxes_h": [], "boxes_o": [], "hoi": [], "object": [], "verb": []},
    ],
}
QPIC = [
    {"file_name": "HICO_test2015_00000001.jpg",
     "annotations": [{"bbox": [10, 20, 110, 220], "category_id": 1}, {"bbox": [5, 150, 200, 330], "category_id": 2},
                     {"bbox": [300, 40, 380, 300], "category_id": 1}],
     "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 77},
                        {"subject_id": 2, "object_id": 1, "category_id": 58}]},
    {"file_name": "HICO_test2015_00000002.jpg",
     "annotations": [{"bbox": [50, 60, 150, 360], "category_id": 1}, {"bbox": [120, 100, 140, 130], "category_id": 47}],
     "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 37}]},
    {"file_name": "HICO_test2015_00000003.jpg", "annotations": [], "hoi_annotation": []},
]


@pytest.fixture
def files(tmp_path):
    ls = hico_det()
    d = json.loads(json.dumps(HICODET))
    for a in d["annotation"]:
        a["hoi"] = [ls.class_index(v, o) for v, o in zip(a["verb"], a["object"])]
    f1, f2 = tmp_path / "instances_test2015.json", tmp_path / "test_hico.json"
    f1.write_text(json.dumps(d))
    f2.write_text(json.dumps(QPIC))
    return f1, f2


def test_both_formats_give_the_same_annotations(files):
    ls = hico_det()
    a = read_hicodet_json(files[0], ls)
    b = read_qpic_json(files[1], ls, sizes={n: s for n, s in zip(HICODET["filenames"], HICODET["size"])})
    assert a.equals(b)
    assert len(a) == 3 and a.num_pairs == 3 and a.empty_images.tolist() == [2]
    assert ls.class_name(int(a.hoi[0])) == "ride bicycle"
    # stored in the coord convention: 1-based inclusive [10, 20, 110, 220] covers [9, 19, 110, 220]
    np.testing.assert_array_equal(a.boxes_h[0], [9, 19, 110, 220])
    assert read_annotations(files[1], ls).sizes.tolist() == [[-1, -1]] * 3  # QPIC has no sizes


def test_reader_errors_name_the_image(files, tmp_path):
    ls = hico_det()
    d = json.loads(files[0].read_text())
    d["annotation"][1]["hoi"] = [0]  # board airplane, but the file says hold cup
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(AnnotationError, match="image HICO_test2015_00000002.jpg, pair 0"):
        read_hicodet_json(bad, ls)
    q = json.loads(files[1].read_text())
    q[0]["hoi_annotation"][0]["object_id"] = 7
    bad.write_text(json.dumps(q))
    with pytest.raises(AnnotationError, match="HICO_test2015_00000001.jpg: a subject_id or object_id"):
        read_qpic_json(bad, ls)
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match="not a readable JSON"):
        read_annotations(bad, ls)


def test_hico_label_space_facts():
    ls = hico_det()
    assert (ls.num_classes, ls.num_objects, len(ls.verbs)) == (600, 80, 117)
    assert ls.objects[ls.human] == "person" and ls.verbs[57] == "no_interaction"
    assert ls.rare.sum() == 138 and ls.classes_of_object(0).tolist() == list(range(10))  # airplane
    assert ls.object_from_coco([1, 2, 12, 90], "coco91").tolist() == [49, 9, -1, 71]  # 12: no COCO class
    assert ls.object_from_coco([0, 79], "coco80").tolist() == [49, 71]
    assert {k: len(v["unseen"]) for k, v in ls.zero_shot_splits.items()} == {
        "rare_first": 120, "non_rare_first": 120, "unseen_object": 100, "unseen_verb": 84}


def test_label_space_round_trip_and_validation(tmp_path, tiny_ls):
    f = tmp_path / "ls.json"
    tiny_ls.save(f)
    again = LabelSpace.load(f)
    assert again == tiny_ls and again.fingerprint == tiny_ls.fingerprint
    d = tiny_ls.to_dict()
    d["hoi"][0] = [0, 9]
    with pytest.raises(LabelSpaceError, match="HOI class 0 .* out of range"):
        LabelSpace.from_dict(d)
    with pytest.raises(LabelSpaceError, match="neither a built-in"):
        LabelSpace.load("no_such_dataset")


@pytest.mark.parametrize("field, value, message", [
    ("human", 0.9, "expected an integer, got 0.9"),        # int() would truncate to object 0
    ("objects", "abc", "'objects' must be a list of strings"),
    ("hoi", [[0, 1, 2]], "malformed field"),
    ("zero_shot_splits", {"x": 5}, "malformed field"),
])
def test_label_space_fields_of_the_wrong_type_are_named(tiny_ls, field, value, message):
    d = tiny_ls.to_dict()
    d[field] = value
    with pytest.raises(LabelSpaceError, match=f"ls.json: .*{message}"):
        LabelSpace.from_dict(d, source="ls.json")
    d = tiny_ls.to_dict()
    d["verbs"][1] = d["verbs"][0]
    with pytest.raises(LabelSpaceError, match="more than once"):
        LabelSpace.from_dict(d)


def test_box_conventions_round_trip():
    b = np.array([[1.0, 2.0, 10.0, 20.0]])
    for src in B.BOX_FORMATS:
        for dst in B.BOX_FORMATS:
            np.testing.assert_array_equal(B.convert(B.convert(b, src, dst), dst, src), b)
    np.testing.assert_array_equal(B.convert(b, "coord", "pixel1"), [[2, 3, 10, 20]])
    np.testing.assert_array_equal(B.convert(b, "pixel0", "pixel1"), [[2, 3, 11, 21]])


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["filenames"].__setitem__(1, d["filenames"][0]), "HICO_test2015_00000001.jpg is listed more than once"),
    (lambda d: d["annotation"][1].__setitem__("hoi", [25.5]), "HICO_test2015_00000002.jpg: malformed annotation"),
    (lambda d: d["annotation"][1].__setitem__("boxes_h", [[150, 60, 50, 360]]),
     r"HICO_test2015_00000002.jpg, pair 0: boxes_h \[150.0, 60.0, 50.0, 360.0\] .* x2 < x1"),
    (lambda d: d["annotation"][0]["boxes_o"][1].__setitem__(0, float("nan")),
     "HICO_test2015_00000001.jpg, pair 1: boxes_o .* not finite"),
    (lambda d: d["size"].__setitem__(2, [320]), r"malformed 'size'"),
])
def test_values_that_would_silently_skew_the_evaluation_are_refused(files, tmp_path, edit, message):
    """A duplicated image would take another copy's predictions; 25.5 would be truncated to
    class 25; an inverted or NaN box can never be matched."""
    d = json.loads(files[0].read_text())
    edit(d)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(AnnotationError, match=message):
        read_hicodet_json(bad, hico_det())


def test_qpic_entry_errors_name_the_entry(files, tmp_path):
    q = json.loads(files[1].read_text())
    bad = tmp_path / "bad.json"
    for edit, message in [(lambda q: q.__setitem__(1, "x"), "entry 1 is not an object with a 'file_name'"),
                          (lambda q: q[0]["hoi_annotation"][0].__setitem__("object_id", 1.5),
                           "HICO_test2015_00000001.jpg: malformed entry")]:
        q2 = json.loads(json.dumps(q))
        edit(q2)
        bad.write_text(json.dumps(q2))
        with pytest.raises(AnnotationError, match=message):
            read_qpic_json(bad, hico_det())
