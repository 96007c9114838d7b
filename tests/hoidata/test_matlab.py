"""The official evaluation's detection files: the bytes, the layout eval_one.m reads, and a
round trip that leaves every AP unchanged."""

import io
import json

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from hoidata import matlab
from hoidata.annotations import hico_test_annotations
from hoidata.evaluation import evaluate
from hoidata.labelspace import hico_det
from hoidata.predictions import Predictions, PredictionsError, write_predictions


@pytest.fixture(scope="module")
def hico():
    return hico_test_annotations(), hico_det()


@pytest.fixture(scope="module")
def hico_preds(hico):
    """Jittered ground truth with half the classes wrong and tied scores: 20,000 rows."""
    gt, _ = hico
    rng = np.random.default_rng(0)
    g = rng.integers(0, gt.num_pairs, 20_000)
    jitter = rng.normal(0, 6, (len(g), 8))
    hoi = np.where(rng.random(len(g)) < 0.5, gt.hoi[g], rng.integers(0, 600, len(g)))
    return Predictions.from_arrays(gt.file_names, gt.image_of_pair[g], gt.boxes_h[g] + jitter[:, :4],
                                   gt.boxes_o[g] + jitter[:, 4:], hoi, np.round(rng.random(len(g)), 2), "coord")


def _cells(rng, shape=(3, 5)):
    cells = np.empty(shape, dtype=object)
    cells.fill(matlab._EMPTY)
    cells[0, 1] = rng.random((1, 9))
    cells[2, 4] = rng.random((4, 9))
    cells[1, 0] = rng.random((2, 9))
    return cells


@pytest.mark.parametrize("compress", [False, True])
def test_writer_bytes_equal_scipy_savemat(tmp_path, compress):
    cells = _cells(np.random.default_rng(1))
    ours = tmp_path / "a.mat"
    matlab._write_cell_mat(ours, "all_boxes", cells, compress=compress)
    theirs = io.BytesIO()
    scipy.io.savemat(theirs, {"all_boxes": cells}, do_compression=compress)
    # the first 116 bytes are free text (scipy writes its creation time there)
    assert ours.read_bytes()[116:] == theirs.getvalue()[116:]
    back = scipy.io.loadmat(ours)["all_boxes"]
    assert back.shape == (3, 5) and back.dtype == object
    for (a, j), c in np.ndenumerate(cells):
        np.testing.assert_array_equal(np.asarray(back[a, j], dtype=float).reshape(-1, 9), c)


def test_obj_layout_follows_eval_one(tmp_path, hico):
    """The file of an object is its 1-based COCO-80 index; its rows are the object's classes
    in official order; columns are list_test; boxes 0-based."""
    gt, ls = hico
    bicycle = ls.objects.index("bicycle")
    ride = ls.class_index(ls.verbs.index("ride"), bicycle)
    first = int(ls.classes_of_object(bicycle)[0])
    j = 123
    p = Predictions.from_arrays([gt.file_names[j]], [0, 0], [[10, 20, 30, 40], [0, 0, 5, 5]],
                                [[50, 60, 70, 80], [1, 1, 4, 4]], [ride, ride], [0.5, 0.25], "coord")
    out = matlab.export(tmp_path / "det", gt.file_names, p, ls, layout="obj")
    assert sorted(f.name for f in out.glob("*.mat")) == [f"detections_{k:02d}.mat" for k in range(1, 81)]
    cells = scipy.io.loadmat(out / "detections_02.mat")["all_boxes"]  # COCO class 2 is bicycle
    assert cells.shape == (len(ls.classes_of_object(bicycle)), 9658)
    # pixel0 = coord - [0, 0, 1, 1]; rows in file order
    np.testing.assert_array_equal(cells[ride - first, j], [[10, 20, 29, 39, 50, 60, 69, 79, 0.5],
                                                           [0, 0, 4, 4, 1, 1, 3, 3, 0.25]])
    assert sum(np.size(c) for c in cells.flat) == 18
    info = json.loads((out / "export.json").read_text())
    assert info["detections"] == 2 and info["labelspace"] == "hico_det" and info["box_convention"] == "pixel0"


@pytest.mark.parametrize("layout", ["obj", "all"])
def test_round_trip_keeps_every_ap(tmp_path, hico, hico_preds, layout):
    gt, ls = hico
    out = matlab.export(tmp_path / "det", gt.file_names, hico_preds, ls, layout=layout)
    back = matlab.read(out, gt.file_names, ls)
    assert len(back) == len(hico_preds) and back.box_format == "pixel0"
    before, after = evaluate(gt, hico_preds, ls), evaluate(gt, back, ls)
    for setting in ("default", "known_object"):
        np.testing.assert_array_equal(after.ap[setting], before.ap[setting])
    assert before.summary()["default"]["full"] > 0.05  # a round trip of something, not of nothing


def test_export_is_atomic(tmp_path, hico, hico_preds, monkeypatch):
    gt, ls = hico
    out = tmp_path / "det"
    calls = []

    def failing(path, name, cells, compress=True):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        path.write_bytes(b"x")

    monkeypatch.setattr(matlab, "_write_cell_mat", failing)
    with pytest.raises(OSError, match="disk full"):
        matlab.export(out, gt.file_names, hico_preds, ls)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its work-in-progress copy
    monkeypatch.undo()
    matlab.export(out, gt.file_names, hico_preds, ls, layout="all")
    with pytest.raises(FileExistsError, match="--overwrite"):
        matlab.export(out, gt.file_names, hico_preds, ls, layout="all")
    matlab.export(out, gt.file_names, hico_preds, ls, layout="obj", overwrite=True)
    assert not (out / "detections.mat").exists() and (out / "detections_01.mat").exists()


def test_read_refuses_files_that_do_not_fit(tmp_path, hico):
    gt, ls = hico
    out = tmp_path / "det"
    out.mkdir()
    bad = np.empty((600, 10), dtype=object)
    bad.fill(matlab._EMPTY)
    matlab._write_cell_mat(out / "detections.mat", "all_boxes", bad)
    with pytest.raises(PredictionsError, match=r"detections.mat: .*\(600, 10\).*600 classes x 9658 images"):
        matlab.read(out, gt.file_names, ls)
    (out / "detections.mat").unlink()
    with pytest.raises(PredictionsError, match="80 per-object files are missing"):
        matlab.read(out, gt.file_names, ls)


def test_cli_export_then_eval_gives_the_same_numbers(tmp_path, hico_preds):
    from hoi.cli import main

    f = tmp_path / "p.npz"
    write_predictions(hico_preds, f)
    runner = CliRunner()
    out = runner.invoke(main, ["export-mat", "--predictions", str(f), "-o", str(tmp_path / "det")])
    assert out.exit_code == 0, out.output
    assert "20,000 detections on 9,658 images in 80 file(s)" in out.output
    direct = runner.invoke(main, ["eval-predictions", "--predictions", str(f), "--json"])
    via_mat = runner.invoke(main, ["eval-predictions", "--predictions", str(tmp_path / "det"), "--json"])
    assert direct.exit_code == 0 and via_mat.exit_code == 0, via_mat.output
    assert json.loads(via_mat.stdout) == json.loads(direct.stdout)
    again = runner.invoke(main, ["export-mat", "--predictions", str(f), "-o", str(tmp_path / "det")])
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path, hico, hico_preds):
    gt, ls = hico
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an export of this command"):
        matlab.export(mine, gt.file_names, hico_preds, ls, layout="all", overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"


def test_obj_layout_refuses_objects_without_a_coco_index(tmp_path, tiny_ls):
    """Classes of an unmapped object would silently vanish from the per-object files."""
    d = tiny_ls.to_dict()
    d["coco80_to_object"] = [-1] * 80
    d["coco80_to_object"][0] = d["human"]
    ls = type(tiny_ls).from_dict(d)
    with pytest.raises(ValueError, match="has no COCO-80 index.*use the 'all' layout"):
        matlab.object_files(ls)


@pytest.mark.parametrize("content, message", [
    (b'{"box_format": 1}', "not a MATLAB file"),
    (b"MATLAB 7.3 MAT-file" + bytes(200), "not a MATLAB file|v7.3"),
])
def test_read_names_unreadable_files(tmp_path, hico, content, message):
    gt, ls = hico
    f = tmp_path / "detections.mat"
    f.write_bytes(content)
    with pytest.raises(PredictionsError, match=message):
        matlab.read(f, gt.file_names, ls)
