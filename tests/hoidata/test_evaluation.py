"""The evaluator against hand-built cases, one per protocol rule, and against the real
HICO-DET test annotations."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_gt
from conftest import make_preds as preds

from hoidata.annotations import hico_test_annotations
from hoidata.evaluation import THRESHOLDS, evaluate, evaluate_file, overlap_pixel1
from hoidata.labelspace import hico_det
from hoidata.predictions import Predictions, PredictionsError, read_predictions, write_predictions
from hoidata.reference_eval import reference_evaluate

BOX = [1, 1, 10, 10]  # pixel1: 10 x 10 pixels
OBJ = [21, 21, 40, 40]


def ap_of(gt, p, ls, c=0, setting="default"):
    return evaluate(gt, p, ls).ap[setting][c]


# -- IoU and matching ----------------------------------------------------------------

def test_iou_exactly_half_is_a_match(tiny_ls):
    gt = make_gt({"a": [(0, BOX, OBJ)]})
    assert overlap_pixel1(np.array([1, 1, 10, 20.]), np.array(BOX, float)) == 0.5
    assert ap_of(gt, preds({"a": [([1, 1, 10, 20], OBJ, 0, 0.9)]}), tiny_ls) == pytest.approx(1.0)
    # one more pixel row: 100 / 210 < 0.5
    assert ap_of(gt, preds({"a": [([1, 1, 10, 21], OBJ, 0, 0.9)]}), tiny_ls) == 0.0


def test_overlap_needs_positive_width_and_height():
    # boxes that touch in the +1 convention overlap by one pixel column; one further apart do not
    assert overlap_pixel1(np.array([10, 1, 20, 10.]), np.array(BOX, float)) > 0
    assert overlap_pixel1(np.array([11, 1, 20, 10.]), np.array(BOX, float)) == 0


def test_duplicate_is_a_false_positive(tiny_ls):
    gt = make_gt({"a": [(0, BOX, OBJ)], "b": [(0, BOX, OBJ)]})
    p = preds({"a": [(BOX, OBJ, 0, 0.9), (BOX, OBJ, 0, 0.8)], "b": [(BOX, OBJ, 0, 0.7)]})
    # tp = [1, 0, 1]: rec [.5, .5, 1], prec [1, .5, 2/3]
    expected = 0.0
    for t in THRESHOLDS:
        expected = expected + (1.0 if t <= 0.5 else 2 / 3) / 11
    assert ap_of(gt, p, tiny_ls) == expected


def test_no_fallback_to_the_next_best_pair(tiny_ls):
    a, b = [1, 1, 10, 10], [1, 1, 10, 12]  # two GT pairs that overlap heavily
    gt = make_gt({"img": [(0, a, OBJ), (0, b, OBJ)]})
    # both detections sit exactly on pair a; the second also overlaps b by 100/120 >= 0.5,
    # but the official code does not fall back to b: it is a false positive.
    p = preds({"img": [(a, OBJ, 0, 0.9), (a, OBJ, 0, 0.8)]})
    r = evaluate(gt, p, tiny_ls)
    assert r.recall["default"][0] == 0.5
    ref = reference_evaluate(gt, p, tiny_ls)
    assert ref[0] == r.ap["default"][0]


def test_first_maximum_wins(tiny_ls):
    # two identical GT pairs: a detection matches the first; a second detection is then a duplicate
    gt = make_gt({"img": [(0, BOX, OBJ), (0, BOX, OBJ)]})
    p = preds({"img": [(BOX, OBJ, 0, 0.9), (BOX, OBJ, 0, 0.8)]})
    assert evaluate(gt, p, tiny_ls).recall["default"][0] == 0.5


# -- ordering --------------------------------------------------------------------------

def test_score_ties_keep_image_order_then_row_order(tiny_ls):
    gt = make_gt({"first": [(0, BOX, OBJ)], "second": [(0, BOX, OBJ)]})
    miss = ([50, 50, 60, 60], OBJ, 0, 0.5)
    hit = (BOX, OBJ, 0, 0.5)
    # image order: the miss in 'first' comes before the hit in 'second' -> prec [0, .5]
    expected_miss_first = sum(0.5 / 11 for t in THRESHOLDS if t <= 0.5)
    p = preds({"first": [miss], "second": [hit]})
    assert ap_of(gt, p, tiny_ls) == pytest.approx(expected_miss_first, abs=0)
    # the order of images in the predictions file does not matter: annotation order does
    p_rev = preds({"second": [hit], "first": [miss]})
    assert ap_of(gt, p_rev, tiny_ls) == ap_of(gt, p, tiny_ls)
    # within one image, row order breaks ties: hit first -> prec [1, .5]
    gt1 = make_gt({"first": [(0, BOX, OBJ)], "x": [(0, BOX, OBJ)]})
    a = ap_of(gt1, preds({"first": [hit, miss]}), tiny_ls)
    b = ap_of(gt1, preds({"first": [miss, hit]}), tiny_ls)
    assert a == sum(1.0 / 11 for t in THRESHOLDS if t <= 0.5)
    assert b == sum(0.5 / 11 for t in THRESHOLDS if t <= 0.5)


# -- 11-point AP with MATLAB's thresholds ----------------------------------------------

def test_thresholds_are_matlabs_colon():
    assert THRESHOLDS[3] == 0.1 * 3 != 0.3      # the famous 0:0.1:1 element
    assert THRESHOLDS[6] == 0.6 and THRESHOLDS[7] == 0.7
    assert np.arange(0, 1.1, 0.1)[6] != 0.6     # what a port with arange gets wrong


@pytest.mark.parametrize("npos, tps, expected_points", [(5, 3, 7), (10, 7, 8), (10, 3, 3)])
def test_recall_landing_on_a_threshold(tiny_ls, npos, tps, expected_points):
    """rec = 3/5 = 0.6 and 7/10 = 0.7 reach the thresholds 0.6 and 0.7; rec = 3/10 does not
    reach MATLAB's 0.30000000000000004."""
    gt = make_gt({f"i{k}": [(0, BOX, OBJ)] for k in range(npos)})
    p = preds({f"i{k}": [(BOX, OBJ, 0, 1.0 - k / 100)] for k in range(tps)})
    expected = 0.0
    for _ in range(expected_points):
        expected = expected + 1.0 / 11
    assert ap_of(gt, p, tiny_ls) == expected


def test_class_without_detections_scores_zero(tiny_ls):
    gt = make_gt({"a": [(0, BOX, OBJ), (1, BOX, OBJ)]})
    r = evaluate(gt, preds({"a": [(BOX, OBJ, 0, 0.9)]}), tiny_ls)
    assert r.ap["default"][0] == pytest.approx(1.0) and r.ap["default"][1] == 0.0
    assert np.isnan(r.ap["default"][2])  # no GT at all: left out of the means
    assert r.mean("default") == pytest.approx(0.5)


# -- images without pairs and Known-Object ---------------------------------------------

def test_predictions_on_an_empty_image_are_false_positives(tiny_ls):
    gt = make_gt({"a": [(0, BOX, OBJ)], "empty": []})
    p = preds({"empty": [(BOX, OBJ, 0, 0.99)], "a": [(BOX, OBJ, 0, 0.5)]})
    r = evaluate(gt, p, tiny_ls)
    assert r.ap["default"][0] == sum(0.5 / 11 for _ in THRESHOLDS)
    # Known-Object drops it: the empty image has no ball
    assert r.ap["known_object"][0] == pytest.approx(1.0)


def test_known_object_keeps_only_images_with_the_object(tiny_ls):
    gt = make_gt({"ball": [(0, BOX, OBJ)], "cup": [(3, BOX, OBJ)], "ball2": [(2, BOX, OBJ)]})
    p = preds({"cup": [(BOX, OBJ, 0, 0.9)],            # hold-ball in a cup-only image
               "ball2": [(BOX, [60, 60, 70, 70], 0, 0.8)],  # in a ball image, wrong box: kept, FP
               "ball": [(BOX, OBJ, 0, 0.7)]})
    r = evaluate(gt, p, tiny_ls)
    ko = sum((1 / 2 if t <= 1 else 0) / 11 for t in THRESHOLDS)  # prec [0, .5], rec [0, 1]
    assert r.ap["known_object"][0] == ko
    assert r.ap["default"][0] == sum((1 / 3) / 11 for _ in THRESHOLDS)
    assert r.ap["known_object"][0] == reference_evaluate(gt, p, tiny_ls, known_object=True)[0]


# -- box conventions -------------------------------------------------------------------

def test_each_box_convention(tiny_ls):
    gt = make_gt({"a": [(0, BOX, OBJ)]})
    half = {"pixel1": ([1, 1, 10, 20], [21, 21, 40, 40]),   # IoU_h exactly 0.5
            "pixel0": ([0, 0, 9, 19], [20, 20, 39, 39]),
            "coord": ([0, 0, 10, 20], [20, 20, 40, 40])}
    for fmt, (bh, bo) in half.items():
        assert ap_of(gt, preds({"a": [(bh, bo, 0, 0.9)]}, fmt), tiny_ls) == pytest.approx(1.0), fmt
    # the same numbers read in the wrong convention miss by a pixel
    bh, bo = half["pixel0"]
    assert ap_of(gt, preds({"a": [(bh, bo, 0, 0.9)]}, "pixel1"), tiny_ls) == 0.0


# -- against the line-by-line port of the MATLAB loops ----------------------------------

def test_matches_reference_port_on_random_predictions(tiny_ls):
    rng = np.random.default_rng(7)
    images = {}
    for i in range(40):
        pairs = []
        for _ in range(rng.integers(0, 4)):
            h = rng.integers(1, 60, 2)
            o = rng.integers(1, 60, 2)
            pairs.append((int(rng.integers(0, 4)), [*h, *(h + rng.integers(5, 30, 2))],
                          [*o, *(o + rng.integers(5, 30, 2))]))
        images[f"im{i:02d}"] = pairs
    gt = make_gt(images)
    rows = {}
    for name in rng.permutation(list(images)):
        base = images[name] or [(0, [1, 1, 20, 20], [5, 5, 30, 30])]
        rows[name] = [(np.add(b[1], rng.integers(-3, 4, 4)), np.add(b[2], rng.integers(-3, 4, 4)),
                       int(rng.integers(0, 4)) if rng.random() < 0.3 else b[0],
                       float(rng.integers(0, 5)) / 4)  # few distinct scores: many ties
                      for b in (base[k % len(base)] for k in range(rng.integers(0, 8)))]
    p = preds(rows)
    r = evaluate(gt, p, tiny_ls)
    for setting, ko in (("default", False), ("known_object", True)):
        ref = reference_evaluate(gt, p, tiny_ls, known_object=ko)
        np.testing.assert_array_equal(r.ap[setting], ref)


# -- the real HICO-DET test set --------------------------------------------------------

@pytest.fixture(scope="module")
def hico():
    return hico_test_annotations(), hico_det()


def test_hico_counts(hico):
    gt, ls = hico
    assert len(gt) == 9658 and gt.num_pairs == 33405 and len(gt.empty_images) == 112
    assert np.bincount(gt.hoi, minlength=600).min() >= 2
    assert ls.rare.sum() == 138


def test_hico_ground_truth_as_predictions_scores_one(hico):
    gt, ls = hico
    p = Predictions.from_arrays(gt.file_names, gt.image_of_pair, gt.boxes_h, gt.boxes_o, gt.hoi,
                                np.ones(gt.num_pairs), "coord")
    s = evaluate(gt, p, ls).summary()
    for setting in ("default", "known_object"):
        for col in ("full", "rare", "non_rare"):
            assert s[setting][col] == pytest.approx(1.0, abs=1e-12)
    for split in s["zero_shot"]["default"].values():
        assert split["seen"] == pytest.approx(1.0) and split["unseen"] == pytest.approx(1.0)


def test_hico_no_predictions_scores_zero(hico):
    gt, ls = hico
    p = Predictions.from_arrays([], [], np.zeros((0, 4)), np.zeros((0, 4)), [], [], "coord")
    s = evaluate(gt, p, ls).summary()
    assert all(s[st][c] == 0.0 for st in ("default", "known_object") for c in ("full", "rare", "non_rare"))


def test_hico_empty_images_count(hico):
    gt, ls = hico
    p = Predictions.from_arrays(gt.file_names, gt.image_of_pair, gt.boxes_h, gt.boxes_o, gt.hoi,
                                np.full(gt.num_pairs, 0.5), "coord")
    empty = gt.file_names[gt.empty_images[0]]
    c = int(gt.hoi[0])
    extra = Predictions.from_arrays(gt.file_names + [empty], np.r_[p.image, len(gt)],
                                    np.r_[p.boxes_h, [[0, 0, 5, 5]]], np.r_[p.boxes_o, [[0, 0, 5, 5]]],
                                    np.r_[p.hoi, c], np.r_[p.score, 0.9], "coord")
    # file_names lists the empty image twice: rows on it are still one image's rows
    r = evaluate(gt, extra, ls)
    assert r.ap["default"][c] < 1.0 and r.ap["known_object"][c] == pytest.approx(1.0)


# -- bad predictions and the file formats ----------------------------------------------

def _write(tmp_path, obj, name="p.json"):
    f = tmp_path / name
    f.write_text(json.dumps(obj))
    return f


def test_bad_predictions_name_image_and_row(tmp_path, tiny_ls):
    good = [1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]
    cases = {
        "row 1: expected 10 numbers": {"a": [good, good[:9]]},
        "row 0: HOI class 9 is out of range": {"a": [good[:8] + [9, 0.5]]},
        "row 1: score is nan": {"a": [good, good[:9] + [float("nan")]]},
    }
    gt = make_gt({"a": [(0, BOX, OBJ)]})
    for msg, rows in cases.items():
        f = _write(tmp_path, {"box_format": "pixel1", "predictions": rows})
        with pytest.raises(PredictionsError, match=f"image a, {msg}"):
            evaluate(gt, read_predictions(f), tiny_ls, source=str(f))


def test_unknown_image_fails_or_is_skipped(tmp_path, tiny_ls, caplog):
    gt = make_gt({"a": [(0, BOX, OBJ)]})
    p = preds({"a": [(BOX, OBJ, 0, 0.9)], "zzz.jpg": [(BOX, OBJ, 0, 0.9)]})
    with pytest.raises(PredictionsError, match="zzz.jpg is not in the annotations"):
        evaluate(gt, p, tiny_ls)
    r = evaluate(gt, p, tiny_ls, ignore_unknown_images=True)
    assert r.ap["default"][0] == pytest.approx(1.0) and "zzz.jpg" in caplog.text
    # every row unknown: not a 0.00 but an error, skipping or not
    only_unknown = preds({"zzz.jpg": [(BOX, OBJ, 0, 0.9)], "yyy.jpg": [(BOX, OBJ, 0, 0.5)]})
    with pytest.raises(PredictionsError, match="none of its 2 image.s. is in the annotations .e.g. yyy.jpg"):
        evaluate(gt, only_unknown, tiny_ls, ignore_unknown_images=True)
    with pytest.raises(PredictionsError, match="none of its 2 image.s. is in the annotations.*--annotations FILE"):
        evaluate(gt, only_unknown, tiny_ls)  # not "pass --ignore-unknown-images": that is not the fix


@pytest.mark.parametrize("suffix", [".json", ".json.gz", ".npz"])
def test_predictions_round_trip(tmp_path, suffix):
    p = preds({"a": [(BOX, OBJ, 0, 0.25), ([2, 3, 4, 5.5], OBJ, 3, 0.125)], "b": []}, "coord")
    f = tmp_path / f"p{suffix}"
    write_predictions(p, f)
    q = read_predictions(f)
    assert q.box_format == "coord" and q.file_names[: 1] == ["a"]
    for k in ("image", "boxes_h", "boxes_o", "hoi", "score"):
        np.testing.assert_array_equal(getattr(q, k), getattr(p, k))


def test_cli_eval_predictions_json(tmp_path, tiny_ls):
    from hoi.cli import main
    from hoidata.annotations import write_hicodet_json

    gt = make_gt({"a": [(0, BOX, OBJ)], "b": [(3, BOX, OBJ)]})
    ann = tmp_path / "ann.json"
    write_hicodet_json(gt, tiny_ls, ann)
    ls_file = tmp_path / "ls.json"
    tiny_ls.save(ls_file)
    f = _write(tmp_path, {"box_format": "pixel0",
                          "predictions": {"a": [[0, 0, 9, 9, 20, 20, 39, 39, 0, 0.9]]}})
    out = CliRunner().invoke(main, ["eval-predictions", "--annotations", str(ann), "--labelspace", str(ls_file),
                                    "--predictions", str(f), "--json"])
    assert out.exit_code == 0, out.output
    s = json.loads(out.stdout)
    assert list(s)[:2] == ["default", "known_object"]
    assert set(s["default"]) == {"full", "rare", "non_rare"}
    assert s["default"]["full"] == pytest.approx(0.5)      # class 0: 1.0, class 3: 0.0
    assert s["default"]["non_rare"] == pytest.approx(1.0)  # class 0 has 50 training pairs
    bad = CliRunner().invoke(main, ["eval-predictions", "--annotations", str(ann), "--labelspace", str(ls_file),
                                    "--predictions", str(_write(tmp_path, {"predictions": {}}, "nofmt.json"))])
    assert bad.exit_code != 0 and "--box-format" in bad.output


def test_evaluate_file_uses_bundled_hico(tmp_path):
    gt = hico_test_annotations()
    name = gt.file_names[0]
    i0 = gt.pairs_of(0)
    row = [*i0["boxes_h"][0], *i0["boxes_o"][0], int(i0["hoi"][0]), 1.0]
    f = _write(tmp_path, {"box_format": "coord", "predictions": {name: [row]}})
    r = evaluate_file("hico_det", f)
    assert r.ap["default"][int(i0["hoi"][0])] > 0 and r.num_images == 9658


def test_visualize_draws_the_top_pairs(tmp_path, tiny_ls):
    from PIL import Image

    from hoidata.visualize import draw, top_detections

    Image.new("RGB", (60, 50), (255, 255, 255)).save(tmp_path / "a.png")
    p = preds({"a.png": [([1, 1, 10, 10], [21, 21, 40, 40], 0, 0.2), ([5, 5, 30, 30], [2, 2, 8, 8], 1, 0.9)]},
              "coord")
    assert top_detections(p, "a.png", 1).tolist() == [1]
    out = draw(tmp_path / "a.png", p, tiny_ls, tmp_path / "out" / "a.png", k=1, size=0)
    im = np.asarray(Image.open(out))
    assert im.shape[1:] == (60, 3) and im.shape[0] > 50  # the image at its own size, the legend under it
    assert (im[20, 4:7] != 255).any()        # the best pair's human box (left edge at x = 5) is drawn
    assert (im[38:41, 22:38] == 255).all()   # the other pair's object box (bottom edge at y = 40) is not
    with pytest.raises(ValueError, match="no predictions for image b.png"):
        top_detections(p, "b.png")


def test_pictures_are_sized_to_their_long_side(tmp_path, tiny_ls):
    """A small scene is resampled up, a large photo down, to the size asked for; lines and
    text grow with it (a 2 px line on an 8000 px photo is invisible)."""
    from PIL import Image

    from hoidata.visualize import draw, sizes_for

    for side, size in ((40, 400), (2000, 500)):
        Image.new("RGB", (side, side // 2), (255, 255, 255)).save(tmp_path / "a.png")
        box = side // 10
        p = preds({"a.png": [([box, box, 4 * box, 4 * box], [6 * box, box, 9 * box, 4 * box], 0, 0.9)]}, "coord")
        with Image.open(draw(tmp_path / "a.png", p, tiny_ls, tmp_path / f"{side}.png", size=size)) as im:
            assert im.width == size and im.height > size // 2
    assert sizes_for(300) == (2, 12) and sizes_for(3000) == (12, 75)


def test_labels_never_overlap_and_stay_in_the_picture():
    from hoidata.visualize import _overlaps, place_labels

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 8))
        sizes = [(int(rng.integers(20, 120)), 16) for _ in range(n)]
        anchors = [[tuple(rng.uniform(-20, 320, 2)) for _ in range(3)] for _ in range(n)]
        boxes = place_labels(sizes, anchors, (320, 240))
        assert all(0 <= b[0] and b[2] <= 320 and 0 <= b[1] and b[3] <= 240 for b in boxes)
        assert all((b[2] - b[0], b[3] - b[1]) == s for b, s in zip(boxes, sizes))
        assert not any(_overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # the best pair's label goes where it asked first
    assert place_labels([(30, 10)], [[(50, 60), (0, 0)]], (320, 240)) == [(50, 60, 80, 70)]


def test_the_per_class_ap_figure(tmp_path, tiny_ls):
    from PIL import Image

    from hoidata.visualize import plot_class_ap

    ap = np.array([0.5, np.nan, 0.25])
    out = plot_class_ap(ap, np.array([True, False, False]), ["a b", "c d", "e f"], tmp_path / "ap.png", title="t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 600
    with pytest.raises(ValueError, match="no class has a defined AP"):
        plot_class_ap(np.array([np.nan]), np.array([False]), ["a"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_bundled_ground_truth_needs_its_own_label_space(tmp_path, tiny_ls):
    """Classes of another label space would be scored against HICO-DET's class ids."""
    f = tmp_path / "ls.json"
    tiny_ls.save(f)
    p = _write(tmp_path, {"box_format": "pixel1", "predictions": {}})
    with pytest.raises(ValueError, match="labelled in the hico_det label space"):
        evaluate_file("hico_det", p, labelspace=str(f))


@pytest.mark.parametrize("edit, message", [
    ({"image": np.array([-1])}, "row 0 has image index -1"),
    ({"hoi": np.array([3, 4])}, "arrays of different lengths"),
    ({"hoi": np.array([3.7])}, "'hoi' must hold integers"),
    ({"score": None}, "missing array.*score"),
])
def test_npz_predictions_are_checked(tmp_path, edit, message):
    arrays = dict(file_names=np.array(["a", "b"]), image=np.array([0]), boxes_h=np.zeros((1, 4)),
                  boxes_o=np.zeros((1, 4)), hoi=np.array([3]), score=np.array([0.5]), box_format="coord")
    arrays.update(edit)
    f = tmp_path / "p.npz"
    np.savez(f, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(PredictionsError, match=message):
        read_predictions(f).validate(600, str(f))


def test_visualize_refuses_count_zero(tmp_path):
    from click.testing import CliRunner

    from hoi.cli import main as hoi_main

    (tmp_path / "p.json").write_text("{}")
    r = CliRunner().invoke(hoi_main, ["visualize", "--predictions", str(tmp_path / "p.json"), "--images",
                                      str(tmp_path), "--draw-count", "0", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "--draw-count" in r.output and not (tmp_path / "out").exists()
