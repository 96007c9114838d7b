"""The demo end to end at a tiny size: world, teacher cache, students, the row from pixels
(shipped detector), the zero-shot table, results.json, pictures."""

import json
import shlex

import pytest
from click.testing import CliRunner
from PIL import Image

from hoi.cli import main as hoi_main
from hoi.demo import run_demo

ROWS = ["chance", "teacher", "clip-dense", "global-level", "union-level", "all-late", "all-late-detected", "all-early",
        "weakly-supervised", "fully-supervised"]
SUPERVISION = {"chance": "none", "teacher": "none", "clip-dense": "none", "weakly-supervised": "image-labels",
               "fully-supervised": "pair-labels"}
SPLITS = ["rare_first", "non_rare_first", "unseen_object", "unseen_verb"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(output folder, results, printed lines) of one tiny demo."""
    lines, out = [], tmp_path_factory.mktemp("demo") / "demo"
    results = run_demo(out, epochs=1, train_images=40, val_images=8, test_images=40, figures=2, echo=lines.append)
    return out, results, lines


def test_demo_writes_the_results_table(demo):
    out, results, lines = demo
    written = json.loads((out / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert [r["name"] for r in written["rows"]] == ROWS
    for row in written["rows"]:
        for setting in ("default", "known_object"):
            assert set(row[setting]) == {"full", "rare", "non_rare"}
            assert 0.0 <= row[setting]["full"] <= 1.0
    # every zero-shot split: the student without its classes, with them, the teacher, CLIP's dense map, chance
    assert [u["split"] for u in written["unseen"]] == SPLITS
    assert {r["name"]: r["supervision"] for r in written["rows"]} == {n: SUPERVISION.get(n, "clip") for n in ROWS}
    for u in written["unseen"]:
        for who in ("trained_without", "trained_with", "teacher", "clip_dense", "chance", "fully_supervised_without"):
            assert 0.0 <= u[who]["unseen"] <= 1.0
    assert set(written["stage_seconds"]) == {"world", "teacher_cache", "students", "asked_in_words", "detected",
                                             "figures"} and written["complete"] is True
    assert len(list((out / "figures").glob("*.png"))) == 2
    with Image.open(out / "ap_per_class.png") as im:  # the all-late row, class by class, beside the results
        assert im.format == "PNG"
    assert any("all-late" in line or "late fusion" in line for line in lines)
    # the rows trained on HOI labels are printed apart, under a line that says so
    head = next(k for k, line in enumerate(lines) if "trained on HOI labels" in line)
    assert "image-level HOI labels" in lines[head + 1] and "pair HOI labels" in lines[head + 1]
    assert not any("HOI labels" in line for line in lines[:head])
    assert "both levels, late fusion" in lines[head - 1]


def test_a_results_file_written_before_the_last_stage_says_what_it_covers(demo, tmp_path, monkeypatch):
    """The students' table is written as soon as it is measured; a later stage's crash leaves it
    saying so, never looking like the whole run's."""
    import shutil

    import hoi.demo as D

    out = tmp_path / "demo"
    shutil.copytree(demo[0], out, symlinks=True)
    (out / "results.json").unlink()

    def crash(*a, **kw):
        raise RuntimeError("the detected row crashed")

    monkeypatch.setattr(D, "_detected_row", crash)
    with pytest.raises(RuntimeError, match="the detected row crashed"):
        run_demo(out, epochs=1, train_images=40, val_images=8, test_images=40, figures=2, echo=lambda line: None)
    written = json.loads((out / "results.json").read_text())
    assert written["complete"] is False and set(written["stage_seconds"]) == {"world", "teacher_cache", "students"}
    assert [r["name"] for r in written["rows"]] == [n for n in ROWS if n != "all-late-detected"]


def test_the_printed_words_command_gives_the_zero_shot_table_s_figure(demo):
    """The unseen-verb student asked for the held-out verb's classes in words: as printed, the
    same unseen-class mAP as the zero-shot table's row."""
    out, results, lines = demo
    asked = results["asked_in_words"]
    row = next(u for u in results["unseen"] if u["split"] == "unseen_verb")
    assert asked["default"] == pytest.approx(row["trained_without"]["unseen"], abs=1e-12)
    assert any(asked["command"] in line for line in lines)
    r = CliRunner().invoke(hoi_main, shlex.split(asked["command"])[1:])
    assert r.exit_code == 0, r.output
    assert f"classes asked for ({len(asked['classes'])}): Default {100 * asked['default']:.2f}" in r.output


def test_the_printed_detect_command_reproduces_the_detected_row(demo, tmp_path):
    """What the demo prints for the row from pixels, run as printed, gives the row's mAP."""
    out, results, lines = demo
    row = next(r for r in results["rows"] if r["name"] == "all-late-detected")
    assert row["detector"]["name"] == "tiny-fcos" and len(row["detector"]["weights_sha256"]) == 64
    printed = next(line for line in lines if "hoi detect --images" in line)
    assert row["command"] in printed
    args = shlex.split(row["command"])[1:]
    preds = tmp_path / "again.json"
    args[args.index("-o") + 1] = str(preds)
    r = CliRunner().invoke(hoi_main, args)
    assert r.exit_code == 0, r.output
    world = out / "world"
    r = CliRunner().invoke(hoi_main, ["eval-predictions", "--annotations", str(world / "instances_test.json"),
                                      "--labelspace", str(world / "labelspace.json"), "--predictions", str(preds),
                                      "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["default"]["full"] == row["default"]["full"]
