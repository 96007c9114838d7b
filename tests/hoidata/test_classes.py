"""HOI classes asked for in words: parsing, prompts, refusals, and how predictions carry them to the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_gt, make_preds

from hoidata.classes import ClassQueryError, class_record, gerund, query_labelspace, read_classes_file
from hoidata.evaluation import evaluate
from hoidata.predictions import read_predictions, write_predictions


def test_a_known_class_keeps_its_prompt_and_a_new_composition_borrows_its_verbs_phrase(tiny_ls):
    ls = query_labelspace(tiny_ls, ["kick ball", "kick cup", "hold  Cup"])
    assert [ls.class_name(c) for c in range(ls.num_classes)] == ["kick ball", "kick cup", "hold cup"]
    assert ls.prompts == ("a person kicking a ball", "a person kicking a cup", "a person holding a cup")
    assert ls.objects == tiny_ls.objects and ls.human == tiny_ls.human  # the detector's objects, unchanged
    assert ls.train_counts == (3, 0, 1)  # a new composition has no training pair: Rare
    assert ls.asked == (0, 1, 2)


def test_a_new_verb_takes_its_ing_form_or_the_prompt_given(tiny_ls):
    ls = query_labelspace(tiny_ls, ["throw ball", "pick up cup = a person lifting a cup"])
    assert ls.verbs[-2:] == ("throw", "pick_up")
    assert ls.prompts == ("a person throwing a ball", "a person lifting a cup")
    assert [gerund(v) for v in ("ride", "tie", "hug", "sit_on", "see", "feed")] == \
        ["riding", "tying", "hugging", "sitting on", "seeing", "feeding"]


def test_added_classes_keep_the_base_indices_and_splits(tiny_ls):
    ls = query_labelspace(tiny_ls, ["kick cup", "kick ball"], add=True)
    assert ls.hoi[:tiny_ls.num_classes] == tiny_ls.hoi and ls.num_classes == tiny_ls.num_classes + 1
    assert ls.zero_shot_splits == tiny_ls.zero_shot_splits
    assert ls.asked == (1, 4)  # kick ball is the base's own class 1, kick cup the new class 4


@pytest.mark.parametrize("queries, words", [
    ([], "no class asked for"),
    (["ride unicorn"], "unknown object 'unicorn'"),
    (["ball"], "write it as 'VERB OBJECT'"),
    (["kick ball", "kick  ball"], "asked for twice"),
    (["kick ball ="], "nothing after '='"),
])
def test_queries_that_cannot_be_scored_are_refused_by_name(tiny_ls, queries, words):
    with pytest.raises(ClassQueryError, match=words) as e:
        query_labelspace(tiny_ls, queries)
    if "unicorn" in words:
        assert "ball, cup, person" in str(e.value)  # the known objects are listed


def test_a_classes_file_is_lines_or_a_label_space(tiny_ls, tmp_path):
    lines = tmp_path / "classes.txt"
    lines.write_text("# what to look for\nkick ball\n\nhold cup  # and this\n")
    assert read_classes_file(lines, tiny_ls) == ["kick ball", "hold cup"]
    tiny_ls.save(tmp_path / "ls.json")
    ls = query_labelspace(tiny_ls, read_classes_file(tmp_path / "ls.json", tiny_ls))
    assert ls.hoi == tiny_ls.hoi and ls.prompts == tiny_ls.prompts
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ClassQueryError, match="not valid JSON"):
        read_classes_file(tmp_path / "bad.json", tiny_ls)


GT = {"a.jpg": [(1, [1, 1, 10, 10], [5, 5, 20, 20]), (3, [1, 1, 10, 10], [30, 30, 40, 40])]}


@pytest.mark.parametrize("suffix", [".json", ".json.gz", ".npz"])
def test_predictions_of_asked_classes_are_evaluated_on_those_classes_by_name(tiny_ls, tmp_path, suffix):
    """Query class 0 is 'hold cup' (base class 3), query class 1 'kick ball' (base class 1)."""
    ls = query_labelspace(tiny_ls, ["hold cup", "kick ball"])
    pred = make_preds({"a.jpg": [([1, 1, 10, 10], [30, 30, 40, 40], 0, 0.9), ([1, 1, 10, 10], [5, 5, 20, 20], 1, 0.8)]})
    pred.classes = class_record(ls, np.zeros((2, 4), np.float32))
    write_predictions(pred, tmp_path / f"p{suffix}")
    again = read_predictions(tmp_path / f"p{suffix}")
    assert again.classes == pred.classes
    res = evaluate(make_gt(GT), again, tiny_ls)
    assert res.ap["default"][[1, 3]].tolist() == pytest.approx([1.0, 1.0])  # each row matched in its base class
    scored = res.summary()["scored_classes"]
    assert scored["classes"] == [1, 3] and scored["default"] == pytest.approx(1.0)


def test_predictions_of_a_class_the_label_space_lacks_are_refused_by_name(tiny_ls):
    ls = query_labelspace(tiny_ls, ["kick cup"])
    pred = make_preds({"a.jpg": [([1, 1, 10, 10], [30, 30, 40, 40], 0, 0.9)]})
    pred.classes = class_record(ls, np.zeros((1, 4), np.float32))
    with pytest.raises(ClassQueryError, match="does not have: kick cup"):
        evaluate(make_gt(GT), pred, tiny_ls)
    pred.classes = class_record(query_labelspace(tiny_ls, ["kick ball"]), np.zeros((1, 4), np.float32))
    pred.hoi[:] = 5  # beyond the classes the file records
    with pytest.raises(Exception, match="not one of the 1 classes the file records"):
        evaluate(make_gt(GT), pred, tiny_ls)
