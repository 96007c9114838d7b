"""The command line's one error policy: the project's errors (and OSErrors about paths) are
one line naming the item; anything else keeps its traceback; -v shows every traceback. And
the inputs that used to end in a raw traceback or a wrong value now name the file."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY

from hoi.cli import main as hoi_main
from hoicore.errors import HoiError
from hoidata.predictions import PredictionsError, read_predictions


@pytest.fixture
def labelspace(tmp_path):
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(TINY))
    return path


def _eval(args, labelspace, preds):
    return CliRunner().invoke(hoi_main, [*args, "eval-predictions", "--labelspace", str(labelspace),
                                         "--predictions", str(preds), "--annotations", str(preds)])


def test_a_project_error_is_one_line_and_under_verbose_keeps_its_traceback(tmp_path, labelspace):
    bad = tmp_path / "p.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip at all")
    r = _eval([], labelspace, bad)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    assert "p.npz" in r.output and "Traceback" not in r.output
    r = _eval(["-v"], labelspace, bad)
    assert isinstance(r.exception, HoiError)  # raised on, traceback and all


def test_an_unexpected_error_keeps_its_traceback(tmp_path, labelspace, monkeypatch):
    import hoidata.evaluation

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(hoidata.evaluation, "evaluate_file", bug)
    good = tmp_path / "p.json"
    good.write_text('{"box_format": "coord", "predictions": {}}')
    r = _eval([], labelspace, good)
    assert isinstance(r.exception, ZeroDivisionError)


def test_corrupt_and_misshapen_npz_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(PredictionsError, match="bad.npz"):
        read_predictions(bad)
    shaped = tmp_path / "shape.npz"
    np.savez(shaped, file_names=np.array(["a"]), image=np.zeros(1, np.int64), boxes_h=np.zeros(3),
             boxes_o=np.zeros((1, 4)), hoi=np.zeros(1, np.int64), score=np.zeros(1), box_format=np.array("coord"))
    with pytest.raises(PredictionsError, match="shape.npz"):
        read_predictions(shaped)


def test_deeply_nested_json_is_named_not_a_recursion_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PredictionsError, match="deep.json"):
        read_predictions(deep)


def test_a_huge_hoi_class_is_reported_as_given(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('{"box_format": "coord", "predictions": {"a.jpg": [[0, 0, 5, 5, 1, 1, 9, 9, 1e20, 0.5]]}}')
    with pytest.raises(PredictionsError) as e:
        read_predictions(p).validate(len(TINY["hoi"]), str(p))
    assert "-9223372036854775808" not in str(e.value)
    assert "1e+20" in str(e.value) or "100000000000000000000" in str(e.value)


def test_a_full_disk_names_the_file_and_says_how_to_go_on(tmp_path, labelspace, monkeypatch):
    import errno

    import hoidata.evaluation

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.json"))

    monkeypatch.setattr(hoidata.evaluation, "evaluate_file", full)
    (tmp_path / "p.json").write_text('{"box_format": "coord", "predictions": {}}')
    r = _eval([], labelspace, tmp_path / "p.json")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"the disk is full writing {tmp_path / 'results.json'}" in r.output
    assert "free space and run the same command again" in r.output and "hoi eval-predictions" in r.output
