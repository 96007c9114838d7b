"""The detections store: HDF5 round trip, importers, validation errors, atomic writes, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from hoi.cli_detections import detections as cli
from hoidata import detections as D
from hoidata.annotations import Annotations, write_hicodet_json
from hoidata.labelspace import LabelSpace, hico_det

LS = hico_det()
PERSON, BICYCLE = LS.objects.index("person"), LS.objects.index("bicycle")

# (image_id, file_name, width, height); ids are the file-name numbers, as in COCO-style HICO files.
IMAGES = [(1, "HICO_test2015_00000001.jpg", 640, 480),
          (2, "HICO_test2015_00000002.jpg", 500, 375),
          (5, "HICO_test2015_00000005.jpg", 300, 200)]

# Hand-made COCO results (bbox xywh), with what the import must make of each.
RESULTS = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "score": 0.5},      # person -> [10, 20, 40, 60]
    {"image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 50.5], "score": 0.9},     # bicycle
    {"image_id": 1, "category_id": 12, "bbox": [5, 5, 10, 10], "score": 0.99},      # id 12 is no COCO class: dropped
    {"image_id": 1, "category_id": 1, "bbox": [600, 400, 100, 100], "score": 0.7},  # clipped to [600, 400, 640, 480]
    {"image_id": 1, "category_id": 1, "bbox": [700, 10, 20, 20], "score": 0.8},     # outside: zero area once clipped
    {"image_id": 2, "category_id": 1, "bbox": [1, 2, 0, 10], "score": 0.6},         # zero width: dropped
    {"image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.3},          # tie with the next: file order kept
    {"image_id": 2, "category_id": 1, "bbox": [3, 3, 2, 2], "score": 0.3},
]
# Image 5 has no detection and must still appear.


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def make_dets(attrs=None) -> D.Detections:
    """Four images, two of them (one in the middle, one at the end) without detections."""
    return D.Detections(
        file_names=["a.jpg", "b.jpg", "ünï cödé.jpg", "d.jpg"],
        sizes=[[640, 480], [10, 20], [30, 40], [50, 60]],
        offsets=[0, 2, 2, 3, 3],
        boxes=[[0, 0, 10, 10], [1.5, 2.5, 3.5, 4.5], [5, 5, 6, 7]],
        scores=[0.9, 0.1, 0.5],
        labels=[49, 3, 79],
        attrs=attrs if attrs is not None else {
            "detector": "detr-r50", "weights": "", "score_threshold": 0.2, "nms": {"iou": 0.7, "per_class": True},
            "count": 3, "flag": False, "none": None, "classes": [1, 2, 3], "name": "ß"},
    )


# -- HDF5 round trip ---------------------------------------------------------------------

def test_round_trip_keeps_arrays_attrs_and_empty_images(tmp_path):
    dets = make_dets()
    D.save_detections(dets, tmp_path / "d.h5")
    back = D.load_detections(tmp_path / "d.h5")
    assert back.equals(dets)
    assert back.attrs == dets.attrs and back.attrs["none"] is None and back.attrs["flag"] is False
    assert back.labels.dtype == np.int64 and back.boxes.dtype == np.float32 and back.sizes.dtype == np.int64
    assert back.counts.tolist() == [2, 0, 1, 0]
    with h5py.File(tmp_path / "d.h5") as f:  # the on-disk layout promised in the docstring
        assert f.attrs["schema"] == D.SCHEMA
        assert f["labels"].dtype == np.int16 and f["sizes"].dtype == np.int32 and f["offsets"].dtype == np.int64
        assert f["boxes"].shape == (3, 4) and f["boxes"].dtype == np.float32
        assert list(f["file_names"].asstr()[()]) == dets.file_names


def test_round_trip_without_any_detection(tmp_path):
    dets = D.Detections(["a.jpg", "b.jpg"], [[1, 1], [2, 2]], [0, 0, 0], np.zeros((0, 4)), [], [], {})
    D.save_detections(dets, tmp_path / "d.h5")
    back = D.load_detections(tmp_path / "d.h5")
    assert back.equals(dets) and back.boxes.shape == (0, 4)


def test_per_image_access_and_subset():
    dets = make_dets()
    assert dets.of(0)["scores"].tolist() == pytest.approx([0.9, 0.1])
    assert dets.of(1)["boxes"].shape == (0, 4)
    assert dets.image_index()["ünï cödé.jpg"] == 2
    sub = dets.subset([2, 1, 0])
    assert sub.file_names == ["ünï cödé.jpg", "b.jpg", "a.jpg"]
    assert sub.offsets.tolist() == [0, 1, 1, 3]
    assert sub.labels.tolist() == [79, 49, 3]
    assert np.array_equal(sub.of(2)["boxes"], dets.of(0)["boxes"])


# -- COCO results import -----------------------------------------------------------------

def test_coco_results_import(tmp_path):
    dets = D.import_coco_results(write_json(tmp_path / "r.json", RESULTS), IMAGES, LS, detector="detr")
    assert dets.file_names == [name for _, name, _, _ in IMAGES]
    assert dets.sizes.tolist() == [[640, 480], [500, 375], [300, 200]]
    assert dets.offsets.tolist() == [0, 3, 5, 5]  # image 5: an empty row
    # Image 1, by descending score: bicycle 0.9, clipped person 0.7, person 0.5.
    np.testing.assert_array_equal(dets.of(0)["boxes"], np.float32([[0, 0, 100, 50.5], [600, 400, 640, 480],
                                                                      [10, 20, 40, 60]]))
    assert dets.of(0)["labels"].tolist() == [BICYCLE, PERSON, PERSON] == [9, 49, 49]
    assert dets.of(0)["scores"].tolist() == pytest.approx([0.9, 0.7, 0.5])
    # Equal scores keep the file order.
    np.testing.assert_array_equal(dets.of(1)["boxes"], np.float32([[1, 1, 3, 3], [3, 3, 5, 5]]))
    st = dets.attrs["import_stats"]
    assert st == {"entries": 8, "unknown_image": 0, "unmapped_class": 1, "below_threshold": 0,
                  "clipped": 2, "zero_area": 2, "kept": 5}
    assert dets.attrs["detector"] == "detr" and dets.attrs["box_format"] == "coord"
    assert dets.attrs["labelspace_fingerprint"] == LS.fingerprint


def test_coco_results_threshold_and_coco80_ids(tmp_path):
    res = [dict(r, category_id={1: 0, 2: 1, 12: 80}[r["category_id"]]) for r in RESULTS]  # 0-based COCO-80
    dets = D.import_coco_results(write_json(tmp_path / "r.json", res), IMAGES, LS,
                                 category_ids="coco80", score_threshold=0.6)
    assert dets.offsets.tolist() == [0, 2, 2, 2]
    assert dets.labels.tolist() == [BICYCLE, PERSON]
    assert dets.attrs["import_stats"]["below_threshold"] == 3  # 0.5, 0.3, 0.3 (0.6 and 0.8 die as empty boxes)
    assert dets.attrs["score_threshold"] == 0.6


def test_image_ids_by_index_and_by_file_number(tmp_path):
    ann = Annotations.from_lists(["HICO_test2015_00000123.jpg", "HICO_test2015_00000007.jpg"],
                                 [[100, 100], [200, 200]], [{"boxes_h": [], "boxes_o": [], "hoi": [], "verb": [],
                                                             "object": []}] * 2)
    assert [r[0] for r in D.images_from_annotations(ann, "index")] == [0, 1]
    assert [r[0] for r in D.images_from_annotations(ann, "filename")] == [123, 7]
    res = write_json(tmp_path / "r.json", [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0},
                                           {"image_id": 123, "category_id": 1, "bbox": [0, 0, 6, 6], "score": 1.0}])
    by_name = D.import_coco_results(res, D.images_from_annotations(ann, "filename"), LS, skip_unknown_images=True)
    assert by_name.counts.tolist() == [1, 0] and by_name.boxes[0, 2] == 6  # id 123 -> first image
    by_index = D.import_coco_results(res, D.images_from_annotations(ann, "index"), LS, skip_unknown_images=True)
    assert by_index.counts.tolist() == [0, 1] and by_index.boxes[0, 2] == 5  # id 1 -> second image
    assert by_index.attrs["import_stats"]["unknown_image"] == 1


def test_load_image_list_from_coco_info_and_annotation_file(tmp_path):
    info = write_json(tmp_path / "info.json", {"images": [{"id": i, "file_name": f, "width": w, "height": h}
                                                          for i, f, w, h in IMAGES]})
    assert D.load_image_list(info, LS) == IMAGES
    ann = Annotations.from_lists([f for _, f, _, _ in IMAGES], [(w, h) for *_, w, h in IMAGES],
                                 [{"boxes_h": [], "boxes_o": [], "hoi": [], "verb": [], "object": []}] * 3)
    write_hicodet_json(ann, LS, tmp_path / "ann.json")
    assert D.load_image_list(tmp_path / "ann.json", LS, "filename") == IMAGES
    assert [r[0] for r in D.load_image_list(tmp_path / "ann.json", LS, "index")] == [0, 1, 2]


# -- per-image folder import --------------------------------------------------------------

def write_folder(folder: Path, results=RESULTS, label_of=lambda c: c) -> Path:
    """The same detections as ``results``, one UPT-style JSON per image (boxes xyxy)."""
    folder.mkdir()
    for image_id, name, w, h in IMAGES:
        rs = [r for r in results if r["image_id"] == image_id]
        if image_id == 5:
            continue  # no file at all for this image: tested with missing_ok
        write_json(folder / name.replace(".jpg", ".json"), {
            "boxes": [[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in rs)],
            "scores": [r["score"] for r in rs], "labels": [label_of(r["category_id"]) for r in rs], "size": [w, h]})
    return folder


@pytest.mark.parametrize("kind,label_of", [("coco91", lambda c: c),
                                           ("coco80", lambda c: {1: 0, 2: 1, 12: 80}[c]),
                                           ("dataset", lambda c: {1: PERSON, 2: BICYCLE, 12: 0}[c])])
def test_folder_import_equals_coco_import(tmp_path, kind, label_of):
    coco = D.import_coco_results(write_json(tmp_path / "r.json", RESULTS), IMAGES, LS)
    folder = write_folder(tmp_path / "dets", label_of=label_of)
    dets = D.import_per_image_folder(folder, IMAGES, LS, labels=kind, missing_ok=True)
    if kind == "dataset":  # the unmapped class became object 0 here, so it stays: compare without it
        keep = dets.labels != 0
        assert keep.sum() == coco.num_detections
        assert np.array_equal(dets.boxes[keep], coco.boxes) and np.array_equal(dets.labels[keep], coco.labels)
        return
    assert dets.file_names == coco.file_names
    for key in ("sizes", "offsets", "boxes", "scores", "labels"):
        assert np.array_equal(getattr(dets, key), getattr(coco, key)), key
    assert dets.attrs["import_stats"]["missing_files"] == 1


def test_folder_import_missing_file_names_the_image(tmp_path):
    folder = write_folder(tmp_path / "dets")
    with pytest.raises(D.DetectionsError, match="HICO_test2015_00000005.jpg"):
        D.import_per_image_folder(folder, IMAGES, LS, labels="coco91")


def test_folder_import_malformed_json_names_the_file(tmp_path):
    folder = write_folder(tmp_path / "dets")
    (folder / "HICO_test2015_00000002.json").write_text('{"boxes": [[1, 2, 3, 4]], "scores": [0.5')
    with pytest.raises(D.DetectionsError, match=r"HICO_test2015_00000002\.json: not valid JSON"):
        D.import_per_image_folder(folder, IMAGES, LS, labels="coco91", missing_ok=True)


def test_folder_import_size_mismatch_is_an_error(tmp_path):
    folder = write_folder(tmp_path / "dets")
    write_json(folder / "HICO_test2015_00000001.json", {"boxes": [], "scores": [], "labels": [], "size": [320, 240]})
    with pytest.raises(D.DetectionsError, match=r"HICO_test2015_00000001\.json: size \[320, 240\] differs"):
        D.import_per_image_folder(folder, IMAGES, LS, labels="coco91", missing_ok=True)


# -- errors name the file and the image -----------------------------------------------------

def test_nan_score_names_file_image_and_entry(tmp_path):
    res = [dict(r) for r in RESULTS]
    res[6]["score"] = float("nan")  # json.dumps writes NaN, which Python's json reads back
    path = write_json(tmp_path / "r.json", res)
    with pytest.raises(D.DetectionsError,
                       match=r"r\.json: entry 6 \(image HICO_test2015_00000002\.jpg\): score is not finite"):
        D.import_coco_results(path, IMAGES, LS)


def test_infinite_box_in_folder_names_file_and_detection(tmp_path):
    folder = write_folder(tmp_path / "dets")
    write_json(folder / "HICO_test2015_00000002.json",
               {"boxes": [[0, 0, 1, 1], [0, 0, float("inf"), 1]], "scores": [0.5, 0.4], "labels": [1, 1]})
    with pytest.raises(D.DetectionsError, match=r"HICO_test2015_00000002\.json \(image HICO_test2015_00000002\.jpg\), "
                                                r"detection 1: box is not finite"):
        D.import_per_image_folder(folder, IMAGES, LS, labels="coco91", missing_ok=True)


def test_unknown_image_id_names_the_id(tmp_path):
    path = write_json(tmp_path / "r.json", RESULTS + [{"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                       "score": 0.5}])
    with pytest.raises(D.DetectionsError,
                       match=r"entry 8: image id 42 is not in the image list \(its ids run 1\.\.5\)"):
        D.import_coco_results(path, IMAGES, LS)


@pytest.mark.parametrize("entry, message", [
    ({"image_id": 2, "category_id": 1, "bbox": [0, 0, 1]}, r"entry 2 \(image id 2\) is not"),
    ({"image_id": 2, "category_id": 1.5, "bbox": [0, 0, 1, 1], "score": 0.5}, r"entry 2 \(image id 2\) is not"),
    ({"image_id": 2, "category_id": 1, "bbox": [10, 10, -5, -5], "score": 0.5}, r"entry 2 .* negative width"),
])
def test_malformed_results_entry_is_named(tmp_path, entry, message):
    path = write_json(tmp_path / "r.json", RESULTS[:2] + [entry])
    with pytest.raises(D.DetectionsError, match=message):
        D.import_coco_results(path, IMAGES, LS)


def test_load_rejects_other_labelspace_naming_both(tmp_path):
    D.save_detections(D.import_coco_results(write_json(tmp_path / "r.json", RESULTS), IMAGES, LS), tmp_path / "d.h5")
    other = LabelSpace.from_dict(dict(LS.to_dict(), name="my_dataset"))
    with pytest.raises(D.DetectionsError, match=r"d\.h5: made for label space 'hico_det' .* not 'my_dataset'"):
        D.load_detections(tmp_path / "d.h5", other)
    assert D.load_detections(tmp_path / "d.h5", LS).num_detections == 5


def test_a_byte_changed_after_writing_is_refused(tmp_path, caplog):
    """The audit's case: a box 9.62 -> 0.15 and a score 0.555 -> 3e-20 were taken as they were."""
    path = tmp_path / "d.h5"
    for name, index, value in (("boxes", (0, 1), 0.15), ("scores", 1, 3e-20), ("file_names", 0, "other.jpg")):
        D.save_detections(make_dets(), path)
        with h5py.File(path, "r+") as f:
            f[name][index] = value
        with pytest.raises(D.DetectionsError, match=r"d\.h5: its contents differ from the hash recorded when it "
                                                    r"was written \(the file is damaged\)"):
            D.load_detections(path)
    D.save_detections(make_dets(), path)
    with h5py.File(path, "r+") as f:
        del f.attrs["content_sha256"]  # as an earlier version wrote it
    assert np.array_equal(D.load_detections(path).boxes, make_dets().boxes)
    assert "without a content hash" in caplog.text


def _written_wrong(path, edit) -> None:
    """Edit a saved file the way a faulty writer would have written it (its hash agrees)."""
    with h5py.File(path, "r+") as f:
        edit(f)
        del f.attrs["content_sha256"]


def test_load_validates_contents_and_names_the_image(tmp_path):
    path = tmp_path / "d.h5"
    D.save_detections(make_dets(), path)
    _written_wrong(path, lambda f: f["scores"].__setitem__(2, np.nan))
    with pytest.raises(D.DetectionsError, match=r"d\.h5: image ünï cödé\.jpg, detection 0: score is not finite"):
        D.load_detections(path)
    D.save_detections(make_dets(), path)
    _written_wrong(path, lambda f: f["offsets"].__setitem__(-1, 2))
    with pytest.raises(D.DetectionsError, match=r"d\.h5: offsets run from 0 to 2, expected 0 to 3"):
        D.load_detections(path)
    D.save_detections(make_dets(), path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema"] = "hoi-detections/9"
    with pytest.raises(D.DetectionsError, match="schema is 'hoi-detections/9'"):
        D.load_detections(path)
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(D.DetectionsError, match=r"x\.h5: not a readable HDF5 file"):
        D.load_detections(tmp_path / "x.h5")


def test_labels_out_of_range_name_the_image():
    with pytest.raises(D.DetectionsError, match=r"image a\.jpg, detection 0: label is not below 40"):
        make_dets().validate(num_objects=40)


# -- atomic write -------------------------------------------------------------------------------

def test_failed_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    real = D._write_h5

    def crash_midway(f, dets):
        f.create_dataset("boxes", data=dets.boxes)  # part of the file is written...
        raise OSError("disk full")                   # ...then the write dies

    monkeypatch.setattr(D, "_write_h5", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        D.save_detections(make_dets(), tmp_path / "d.h5")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file

    # An earlier complete file survives a failed overwrite unchanged.
    monkeypatch.setattr(D, "_write_h5", real)
    old = make_dets({"detector": "old"})
    D.save_detections(old, tmp_path / "d.h5")
    monkeypatch.setattr(D, "_write_h5", crash_midway)
    with pytest.raises(OSError):
        D.save_detections(make_dets({"detector": "new"}), tmp_path / "d.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]
    assert D.load_detections(tmp_path / "d.h5").equals(old)


# -- CLI ------------------------------------------------------------------------------------

def test_cli_import_and_inspect(tmp_path):
    res = write_json(tmp_path / "r.json", RESULTS)
    info = write_json(tmp_path / "info.json", {"images": [{"id": i, "file_name": f, "width": w, "height": h}
                                                          for i, f, w, h in IMAGES]})
    out = tmp_path / "d.h5"
    r = CliRunner().invoke(cli, ["import", "--coco-results", str(res), "--images-list", str(info),
                                 "--detector", "detr-r50", "--detector-weights", "detr-r50-e632da11.pth",
                                 "--nms", "none", "--score-threshold", "0.1", "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert "images      3 (1 without detections)" in r.output and "detections  5" in r.output
    assert "unmapped class 1" in r.output and "zero area 2" in r.output
    dets = D.load_detections(out, LS)
    assert dets.num_detections == 5 and dets.attrs["weights"] == "detr-r50-e632da11.pth"
    assert dets.attrs["score_threshold"] == 0.1

    r = CliRunner().invoke(cli, ["inspect", str(out), "--labelspace", "hico_det"])
    assert r.exit_code == 0, r.output
    assert "detr-r50-e632da11.pth" in r.output and "detections  5" in r.output


def test_cli_folder_import_with_bundled_hico_images(tmp_path):
    folder = tmp_path / "dets"
    folder.mkdir()
    write_json(folder / "HICO_test2015_00000001.json",
               {"boxes": [[1, 2, 30, 40]], "scores": [0.9], "labels": [0]})  # COCO-80 index 0: person
    out = tmp_path / "d.h5"
    r = CliRunner().invoke(cli, ["import", "--folder", str(folder), "--missing-ok", "--output", str(out)])
    assert r.exit_code == 0, r.output
    dets = D.load_detections(out, LS)
    assert len(dets) == 9658 and dets.num_detections == 1
    assert dets.of(dets.image_index()["HICO_test2015_00000001.jpg"])["labels"].tolist() == [PERSON]


def test_cli_user_errors_have_no_traceback(tmp_path):
    res = write_json(tmp_path / "r.json", [{"image_id": 10 ** 6, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    r = CliRunner().invoke(cli, ["import", "--coco-results", str(res), "--output", str(tmp_path / "d.h5")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "image id 1000000 is not in the image list" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "d.h5").exists()
    r = CliRunner().invoke(cli, ["import", "--output", str(tmp_path / "d.h5")])
    assert r.exit_code == 2 and "exactly one of --coco-results and --folder" in r.output


@pytest.mark.parametrize("kind", ["external link", "soft link", "external storage", "virtual"])
def test_a_dataset_whose_bytes_live_outside_the_file_is_refused(tmp_path, kind):
    dets = make_dets()
    D.save_detections(dets, tmp_path / "d.h5")
    other = tmp_path / "secret.h5"
    with h5py.File(other, "w") as g:
        g["scores"] = np.full(3, 0.5, np.float32)
    raw = tmp_path / "raw.bin"
    np.full(3, 0.5, np.float32).tofile(raw)
    with h5py.File(tmp_path / "d.h5", "r+") as f:
        del f["scores"]
        if kind == "external link":
            f["scores"] = h5py.ExternalLink(str(other), "scores")
        elif kind == "soft link":
            f["copy"] = np.full(3, 0.5, np.float32)
            f["scores"] = h5py.SoftLink("/copy")
        elif kind == "external storage":
            f.create_dataset("scores", shape=(3,), dtype=np.float32, external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
        else:
            layout = h5py.VirtualLayout(shape=(3,), dtype=np.float32)
            layout[:] = h5py.VirtualSource(str(other), "scores", shape=(3,))
            f.create_virtual_dataset("scores", layout)
    with pytest.raises(D.DetectionsError, match="dataset 'scores' is a .*not data inside the file"):
        D.load_detections(tmp_path / "d.h5")


def test_a_huge_category_id_maps_to_no_object_without_allocating_it():
    assert LS.object_from_coco([1, 10 ** 13, -5]).tolist()[1:] == [-1, -1]
