"""The root attributes a store carries, typed: what readers get, what goes back on disk, and
a malformed one refused by name when the store is opened."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.synthetic_cache import make_synthetic_cache
from cache.schema import DatasetAttrs, TeacherAttrs
from cache.store import CacheError, open_cache


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("schema") / "s.zarr", num_images=16, pairs_per_image=2,
                                num_classes=8, embed_dim=8, grid=(2, 2), images_per_shard=16, image_chunk=8,
                                pair_chunk=16, split="test")


def test_a_record_writes_back_what_was_read_keys_it_does_not_know_included(synthetic):
    c = open_cache(synthetic)
    for key, record in (("teacher", c.teacher), ("dataset", c.dataset), ("layout", c.layout)):
        assert record.to_attrs() == c.attrs[key]
    lay = c.layout  # typed: tuples where the JSON has lists
    assert lay.grid == (2, 2) and lay.shard_rows == (0, lay.num_pair_rows) and lay.num_pair_rows % 16 == 0
    assert 0 < lay.num_pairs <= lay.num_pair_rows and lay.num_images == 16
    # the synthetic teacher has no weights: its fields read as unknown, its own keys ride along
    assert c.teacher.weights_sha256 is None and c.teacher.extra["teacher_seed"] == 0
    assert c.dataset.split == "test" and "num_images" in c.dataset.absent


def test_built_records_keep_the_stored_order():
    t = TeacherAttrs(model="m", prompts=("a b",), mean=(0.5,), std=(0.25,))
    assert list(t.to_attrs())[:4] == ["model", "pretrained", "weights_sha256", "prompts"]
    assert t.to_attrs()["prompts"] == ["a b"] and TeacherAttrs.from_attrs(t.to_attrs(), "x") == t
    d = DatasetAttrs(split=None, num_images=3, absent=frozenset({"split"}))
    assert "split" not in d.to_attrs() and DatasetAttrs.from_attrs(d.to_attrs(), "x").split is None


@pytest.mark.parametrize("key, field, value, message", [
    ("teacher", "union_margin", "wide", "teacher.union_margin is 'wide', not float"),
    ("teacher", "model", None, "teacher.model is None, not str"),
    ("dataset", "split", 3, "dataset.split is 3, not str"),
    ("layout", "num_images", "16", "layout.num_images is '16', not int"),
    ("layout", "num_gt", True, "layout.num_gt is True, not int"),
])
def test_a_malformed_attribute_is_refused_on_open_by_name(synthetic, tmp_path, key, field, value, message):
    copy = tmp_path / "s.zarr"
    shutil.copytree(synthetic, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"][key][field] = value
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=message.replace(".", r"\.")):
        open_cache(copy)


def test_a_teacher_without_a_model_is_refused():
    with pytest.raises(ValueError, match="x has no model"):
        TeacherAttrs.from_attrs({"crop_mode": "squash"}, "x")


def test_a_layout_without_a_size_is_refused_on_open_by_name(synthetic, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(synthetic, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    del meta["attributes"]["layout"]["grid"]
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="layout has no grid"):
        open_cache(copy)
