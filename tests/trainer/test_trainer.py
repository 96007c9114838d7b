"""The student trainer on tiny synthetic caches: data, switches, learning, checkpoints, predict + eval, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import rebind

from bench.synthetic_cache import make_synthetic_cache
from cache.schema import STATUS_SKIPPED
from cache.store import open_cache
from hoi.cli import main as hoi_main
from hoicore.device import resolve_device
from hoicore.errors import InputError
from hoidata.boxes import crop_region
from hoidata.predictions import read_predictions
from trainer import engine
from trainer.ablate import BASELINES, GRID, ablate, format_ablation
from trainer.batch import Block
from trainer.cache_info import labelspace_of, object_class_mask, seen_classes
from trainer.checkpoint import CheckpointError, load_weights
from trainer.config import ConfigError, TrainConfig
from trainer.engine import NonFiniteLossError, build_model, train
from trainer.geometry import to_grid
from trainer.loader import CacheReader, TrainData
from trainer.losses import DistillationLoss, mil_pool
from trainer.model import masked_softmax, pair_scores
from trainer.predict import load_student, predict, run_eval

WORLD = dict(num_classes=24, embed_dim=32, grid=(8, 8), images_per_shard=32, image_chunk=8, pair_chunk=64)
# the distillation losses alone (tests/test_zero_shot.py covers the feature loss)
BASE = TrainConfig(epochs=6, batch_size=16, hidden_dim=32, lr=3e-3, w_feature=0.0, progress=False, threads=1,
                   device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    return {
        "train": make_synthetic_cache(root / "train", num_images=160, pairs_per_image=6, seed=0, split="train",
                                      with_gt=False, **WORLD),
        "test": make_synthetic_cache(root / "test", num_images=64, pairs_per_image=6, seed=1, split="test", **WORLD),
        "other_teacher": make_synthetic_cache(root / "other", num_images=8, pairs_per_image=2, seed=1, split="test",
                                              teacher_seed=1, **WORLD),
    }


@pytest.fixture(scope="module")
def reference(caches, tmp_path_factory):
    """An uninterrupted run of BASE: its folder and final weights."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    train(caches["train"], out, BASE)
    return out, load_weights(out / "checkpoint")


def first_batch(cache_path, config=BASE, size=8):
    cache = open_cache(cache_path)
    block = CacheReader(cache, "squash").read(0, size)
    return block.to_batch(torch.from_numpy(object_class_mask(cache)), torch.device("cpu")), cache


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation, ties given their average rank (float16 teacher scores do tie)."""
    def ranks(x):
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        return ((2 * ends - counts - 1) / 2)[inverse]
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


# -- the synthetic cache and the data ------------------------------------------------------

def test_synthetic_cache_is_valid_and_shard_parallel_writes_same_bytes(tmp_path, caches):
    c = open_cache(caches["test"])
    assert c.verify() == []
    rows = c.read("pairs/image") >= 0
    emb, text = c.read("union/embedding")[rows].astype(np.float32), c.read("text/embedding")
    np.testing.assert_allclose(c.read("union/score")[rows], emb @ text.T, atol=2e-3)  # scores are cosines
    again = open_cache(make_synthetic_cache(tmp_path / "again", num_images=64, pairs_per_image=6, seed=1,
                                            split="test", workers=2, **WORLD))
    for name in ("global/dense", "union/score", "pairs/box"):
        np.testing.assert_array_equal(again.read(name), c.read(name))


def test_to_grid_geometries():
    box, size = np.array([[0, 0, 100, 50]], np.float32), np.array([[200, 100]], np.float32)
    np.testing.assert_allclose(to_grid(box, size, (10, 10), "squash"), [[0, 0, 5, 5]])
    np.testing.assert_allclose(to_grid(box, size, (10, 10), "pad"), [[0, 2.5, 5, 5]])  # 200 x 200, 50 px top pad
    np.testing.assert_allclose(to_grid(box, size, (10, 10), "center"), [[0, 0, 5, 5]])  # centre 100 x 100: x from 50
    union = np.array([[10, 20, 30, 60]], np.float32)  # 20 x 40
    np.testing.assert_allclose(crop_region(union, 0.0, "squash"), union)
    np.testing.assert_allclose(crop_region(union, 0.5, "squash"), [[0, 0, 40, 80]])
    np.testing.assert_allclose(crop_region(union, 0.0, "pad"), [[0, 20, 40, 60]])
    np.testing.assert_allclose(crop_region(union, 0.0, "center"), [[10, 30, 30, 50]])


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_every_image_once_per_epoch_with_its_pairs(caches, in_memory):
    cache = open_cache(caches["train"])
    cfg = BASE.replace(in_memory=in_memory, block_images=8, shuffle_blocks=2, batch_size=12)
    data = TrainData(cache, cfg, "squash")
    reads = []
    read = data.reader.read
    data.reader.read = lambda i0, i1: reads.append(i1 - i0) or read(i0, i1)
    blocks = list(data.epoch(0))
    if in_memory == "no":  # memory is a few blocks, whatever the split's size
        assert max(reads) == 8 and len(reads) == cache.num_images // 8
    assert len(blocks) == len(data) and all(len(b) == 12 for b in blocks[:-1])
    seen = np.concatenate([b.image for b in blocks])
    assert sorted(seen) == list(range(cache.num_images))
    assert not np.array_equal(seen, np.sort(seen))  # shuffled
    merged = Block.concat(blocks)
    begin, end = cache.read("pairs/begin"), cache.read("pairs/end")
    want = np.concatenate([np.arange(begin[i], end[i]) for i in merged.image])
    np.testing.assert_array_equal(merged.pair_row, want)
    np.testing.assert_array_equal(merged.union_score, cache.read("union/score")[want])
    # blocks are chunk-aligned runs inside one shard: whole dense-map chunks are read
    for i0, i1 in data.reader.blocks(cfg.block_images):
        assert i0 % cache.layout.image_chunk == 0 and i0 // 32 == (i1 - 1) // 32


def test_a_window_selects_what_its_blocks_joined_would(caches):
    """Streaming batches are gathered from the window's blocks in place: every array equal
    to selecting the same images from the blocks joined, for any order (across blocks, one
    block, none) and blocks with no image."""
    from dataclasses import fields

    from trainer.batch import Window

    reader = CacheReader(open_cache(caches["train"]), "squash")
    blocks = [reader.read(0, 8), reader.read(8, 8), reader.read(8, 24), reader.read(24, 32)]
    joined, window = Block.concat(blocks), Window(blocks)
    rng = np.random.default_rng(0)
    for idx in (rng.permutation(len(joined)), rng.permutation(len(joined))[:7], np.arange(3, 6),
                np.array([30, 2, 17]), np.zeros(0, np.int64)):
        want, got = joined.select(idx), window.select(idx)
        for f in fields(Block):
            a, b = getattr(want, f.name), getattr(got, f.name)
            assert (a is None) == (b is None) and (a is None or (a.dtype == b.dtype and np.array_equal(a, b))), f.name


def test_skipped_images_are_left_out(tmp_path):
    path = make_synthetic_cache(tmp_path / "c", num_images=16, pairs_per_image=2, seed=2, split="test", **WORLD)
    open_cache(path, mode="r+").array("images/status")[3:5] = STATUS_SKIPPED  # the teacher could not read them
    rebind(path)
    seen = np.concatenate([b.image for b in TrainData(open_cache(path), BASE, "squash").epoch(0)])
    assert sorted(seen) == [i for i in range(16) if i not in (3, 4)]
    pred, _ = predict(path, model="teacher")
    assert len(pred) and not np.isin(pred.image, [3, 4]).any() and len(pred.file_names) == 16


def test_training_on_a_test_split_is_refused_before_anything_is_written(caches, tmp_path):
    with pytest.raises(ConfigError, match=r"is a test split \(its dataset\.split\).*train on the train split's"):
        train(caches["test"], tmp_path / "run", BASE)
    assert not (tmp_path / "run").exists()
    r = CliRunner().invoke(hoi_main, ["train", "--cache", str(caches["test"]), "--output", str(tmp_path / "cli")])
    assert r.exit_code == 1 and "is a test split" in r.output and "Traceback" not in r.output


# -- switches ------------------------------------------------------------------------------

@pytest.mark.parametrize("row", GRID, ids=[r.name for r in GRID])
def test_each_ablation_row_builds_what_it_says(caches, row):
    cfg = BASE.replace(**row.overrides)
    batch, cache = first_batch(caches["test"])
    model = build_model(cfg, cache, torch.device("cpu"))
    outputs = model(batch)
    pair = {"fused"} if cfg.fusion == "early" else {k for k in ("ho", "union") if getattr(cfg, f"{k}_branch")}
    expected = pair | ({"global"} if cfg.global_branch else set())
    assert set(outputs) == set(model.heads) == expected  # a disabled branch is not even built
    losses = DistillationLoss(cfg)(outputs, batch)
    want = {"global"} if cfg.global_branch else set()
    want |= {"mil"} if cfg.ho_branch else set()
    want |= {"union"} if cfg.union_branch else set()
    assert set(losses) == want


def test_supervision_level_switch_ignores_the_other_level(caches):
    batch, cache = first_batch(caches["test"])
    changed = lambda **kw: type(batch)(**{**batch.__dict__, **kw})  # noqa: E731
    for overrides, other in ((GRID[0].overrides, "union_score"), (GRID[1].overrides, "global_score")):
        cfg = BASE.replace(**overrides)
        model, crit = build_model(cfg, cache, torch.device("cpu")), DistillationLoss(cfg)
        out = model(batch)
        before = crit.total(crit(out, batch))
        after = crit.total(crit(out, changed(**{other: torch.randn_like(getattr(batch, other))})))
        assert torch.equal(before, after), f"{other} must not matter to {overrides}"


def test_fusion_switch(caches):
    batch, cache = first_batch(caches["test"])
    moved = batch.grid_boxes.clone()
    moved[:, 2] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # every union box to the corner cell
    with_moved = type(batch)(**{**batch.__dict__, "grid_boxes": moved})
    for cfg, union_matters in ((BASE.replace(fusion="early"), True), (BASE.replace(union_branch=False), False)):
        model = build_model(cfg, cache, torch.device("cpu")).eval()
        a, b = pair_scores(model(batch), batch.class_mask), pair_scores(model(with_moved), batch.class_mask)
        assert (not torch.allclose(a, b)) == union_matters
    # late fusion with one pair branch: the fused scores are that branch's softmax, nothing else
    model = build_model(BASE.replace(union_branch=False), cache, torch.device("cpu"))
    out = model(batch)
    assert torch.equal(pair_scores(out, batch.class_mask), masked_softmax(out["ho"], batch.class_mask))
    # with both: the union weight moves the scores from one branch's softmax to the other's
    out = build_model(BASE, cache, torch.device("cpu"))(batch)
    u, h = masked_softmax(out["union"], batch.class_mask), masked_softmax(out["ho"], batch.class_mask)
    assert torch.allclose(pair_scores(out, batch.class_mask, union_weight=1.0), u)
    assert torch.allclose(pair_scores(out, batch.class_mask, union_weight=0.0), h)
    assert torch.allclose(pair_scores(out, batch.class_mask), (u + h) / 2)


def test_per_level_adapters_keep_each_level_s_losses_to_its_features(caches):
    """(Late fusion: early fusion's one head reads both levels, so both losses reach both.)"""
    batch, cache = first_batch(caches["test"])
    for adapters in ("shared", "per-level"):
        cfg = BASE.replace(adapters=adapters)
        model, crit = build_model(cfg, cache, torch.device("cpu")), DistillationLoss(cfg)
        assert set(model.adapters) == ({"shared"} if adapters == "shared" else {"global", "union"})
        losses = crit(model(batch), batch)
        grads = torch.autograd.grad(losses["union"], list(model.adapters.parameters()), allow_unused=True,
                                    retain_graph=True)
        by_key = {k: [g for (n, _), g in zip(model.adapters.named_parameters(), grads) if n.startswith(k + ".")]
                  for k in model.adapters}
        reached = {k: any(g is not None and g.abs().sum() > 0 for g in gs) for k, gs in by_key.items()}
        key = "shared" if adapters == "shared" else "union"
        assert reached[key]  # the union loss trains the union level's features...
        if adapters == "per-level":  # ...and, kept apart, not the global level's
            assert not reached["global"]
        grads = torch.autograd.grad(losses["global"], list(model.adapters.parameters()), allow_unused=True)
        touched = {n.split(".")[0] for (n, _), g in zip(model.adapters.named_parameters(), grads) if g is not None}
        assert touched == ({"shared"} if adapters == "shared" else {"global"})
    # a union-level student builds only the union level's adapter
    model = build_model(BASE.replace(adapters="per-level", global_branch=False, ho_branch=False), cache,
                        torch.device("cpu"))
    assert set(model.adapters) == set(model.rois) == {"union"}


def test_loss_switches_change_their_loss(caches):
    batch, cache = first_batch(caches["test"])
    model = build_model(BASE, cache, torch.device("cpu"))
    out = model(batch)
    base = DistillationLoss(BASE)(out, batch)
    assert DistillationLoss(BASE.replace(mil="lme"))(out, batch)["mil"] != base["mil"]
    assert DistillationLoss(BASE.replace(label_support="all"))(out, batch)["union"] != base["union"]
    assert DistillationLoss(BASE.replace(temperature=0.05))(out, batch)["global"] != base["global"]
    crit = DistillationLoss(BASE.replace(w_union=3.0))
    assert torch.allclose(crit.total(base), base["global"] + base["mil"] + 3 * base["union"])
    early = DistillationLoss(BASE.replace(fusion="early", w_mil=0.0))
    assert set(early.weights) == {"global", "union"} and early.owner["union"] == "fused"


def test_unseen_classes_take_no_part_in_any_loss(caches):
    """With --unseen, the unseen classes' teacher scores and text embeddings can be anything:
    every loss, and every gradient, stays the same; without it they matter."""
    batch, cache = first_batch(caches["test"])
    ls = cache.attrs["dataset"]["labelspace"]
    unseen = torch.tensor(ls["zero_shot_splits"]["unseen_verb"]["unseen"])
    cfg = BASE.replace(unseen="unseen_verb")
    seen = torch.from_numpy(seen_classes(cache, "unseen_verb"))
    assert (~seen).sum() == len(unseen) > 0 and not seen[unseen].any()
    def noise(x):
        x = x.clone()
        x[:, unseen] = torch.randn(len(x), len(unseen))
        return x

    other = type(batch)(**{**batch.__dict__, "global_score": noise(batch.global_score),
                           "union_score": noise(batch.union_score)})
    model = build_model(cfg, cache, torch.device("cpu"))
    crit = DistillationLoss(cfg, seen)

    def losses_and_grads(b, text=None):
        if text is not None:
            model.text = text
        total = crit.total(crit(model(b), b))
        return total, torch.autograd.grad(total, list(model.parameters()), allow_unused=True)

    base_loss, base_grads = losses_and_grads(batch)
    text = model.text.clone()
    moved_text = text.clone()
    moved_text[unseen] = torch.nn.functional.normalize(torch.randn(len(unseen), text.shape[1]), dim=-1)
    for b, t in ((other, text), (batch, moved_text)):
        loss, grads = losses_and_grads(b, t)
        assert torch.equal(loss, base_loss)
        assert all((g is None and h is None) or torch.equal(g, h) for g, h in zip(grads, base_grads))
    # the same change matters to a student trained on every class
    full = DistillationLoss(BASE)
    model.text = text
    assert full.total(full(model(other), other)) != full.total(full(model(batch), batch))


def test_unseen_split_must_exist_and_scores_every_class_at_test_time(caches, tmp_path):
    with pytest.raises(ConfigError, match="no such zero-shot split.*unseen_verb"):
        train(caches["train"], tmp_path / "typo", BASE.replace(epochs=1, unseen="unseen_verbs"))
    out = train(caches["train"], tmp_path / "uv", BASE.replace(epochs=1, unseen="unseen_verb"))
    pred, info = predict(caches["test"], checkpoint=out["checkpoint"])
    unseen = open_cache(caches["test"]).attrs["dataset"]["labelspace"]["zero_shot_splits"]["unseen_verb"]["unseen"]
    assert info["config"]["unseen"] == "unseen_verb" and np.isin(pred.hoi, unseen).any()


def test_mil_pooling():
    logits = torch.tensor([[1.0, float("-inf")], [3.0, 0.5], [2.0, float("-inf")]])
    image = torch.tensor([0, 0, 1])
    assert torch.equal(mil_pool(logits, image, 2, "max", 1.0), torch.tensor([[3.0, 0.5], [2.0, float("-inf")]]))
    soft = mil_pool(logits, image, 2, "lme", 1.0)
    assert torch.allclose(soft[0, 0], torch.log((torch.exp(torch.tensor(1.0)) + torch.exp(torch.tensor(3.0))) / 2))
    assert soft[0, 1] == 0.5 and soft[1, 0] == 2.0 and soft[1, 1] == float("-inf")  # one pair: itself
    assert torch.allclose(mil_pool(logits, image, 2, "lme", 1e-3), mil_pool(logits, image, 2, "max", 1.0), atol=1e-2)


@pytest.mark.parametrize("change, words", [
    ({"w_global": 0.0}, "--no-global-branch"),
    ({"w_union": 0.0}, "--no-union-branch"),
    ({"fusion": "early", "ho_branch": False}, "early fusion"),
    ({"ho_branch": False, "union_branch": False}, "no branch scores pairs"),
    ({"fusion": "sideways"}, "late, early"),
])
def test_config_errors_say_what_to_do(change, words):
    with pytest.raises(ConfigError, match=words):
        BASE.replace(**change)
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict({**BASE.to_dict(), "colour": "blue"})


# -- learning, seeds, checkpoints -----------------------------------------------------------

def test_loss_falls_and_same_seed_same_weights(caches, reference, tmp_path):
    out, weights = reference
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, BASE.epochs + 1))
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    for k in ("loss_global", "loss_mil", "loss_union"):
        assert lines[-1][k] < lines[0][k]
    train(caches["train"], tmp_path / "again", BASE)
    again = load_weights(tmp_path / "again" / "checkpoint")
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)


def test_resumed_run_ends_where_uninterrupted_one_ends(caches, reference, tmp_path, monkeypatch):
    plain = engine.train_one_epoch

    def killed_in_epoch_3(*args, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return plain(*args, epoch=epoch, **kw)
    monkeypatch.setattr(engine, "train_one_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(caches["train"], tmp_path / "run", BASE)
    monkeypatch.setattr(engine, "train_one_epoch", plain)
    with pytest.raises(ConfigError, match="--resume"):
        train(caches["train"], tmp_path / "run", BASE)
    with pytest.raises(ConfigError, match="lr: 0.003 -> 0.1"):
        train(caches["train"], tmp_path / "run", resume=True, lr=0.1)
    train(caches["train"], tmp_path / "run", resume=True)
    _, weights = reference
    resumed = load_weights(tmp_path / "run" / "checkpoint")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == BASE.epochs


def test_a_finished_run_is_reused_only_for_exactly_its_configuration(caches, reference):
    """Ablation rows and `make train` reuse finished runs; results must never be reported for
    settings that were not trained."""
    out, weights = reference
    metrics = (out / "metrics.jsonl").read_text()
    assert engine.train_or_reuse(caches["train"], out, BASE) == str(out / "checkpoint")
    assert (out / "metrics.jsonl").read_text() == metrics  # nothing trained again
    with pytest.raises(ConfigError, match="hidden_dim: 32 -> 64"):
        engine.train_or_reuse(caches["train"], out, BASE.replace(hidden_dim=64))
    with pytest.raises(ConfigError, match="already trained 6 epochs"):
        engine.train_or_reuse(caches["train"], out, BASE.replace(epochs=3))
    with pytest.raises(CheckpointError, match="trained on"):
        engine.train_or_reuse(caches["test"], out, BASE)


@pytest.mark.parametrize("setting", ["tpu", "CPU", "cuda:x", "mps"])
def test_a_device_typo_is_an_input_error(setting):
    with pytest.raises(InputError, match="--device"):
        resolve_device(setting)


def test_checkpoint_from_another_cache_is_refused(caches, reference):
    out, _ = reference
    with pytest.raises(CheckpointError, match=r"trained on .*: dataset\.\w+ is \S+ there but \S+ here"):
        train(caches["test"], out, resume=True)
    with pytest.raises(CheckpointError, match=r"another teacher.*teacher\.teacher_seed is 0 .* but 1"):
        load_student(out / "checkpoint", open_cache(caches["other_teacher"]), torch.device("cpu"))


def test_a_teacher_is_its_weights_not_the_folder_they_were_loaded_from():
    """The same CLIP (same sha256) from another folder or file is the same teacher; a setting
    that differs is named, not the folder."""
    from cache.schema import teacher_difference

    stored = {"model": "local-dir:minibench/model", "pretrained": None, "weights_sha256": "ab" * 32,
              "crop_mode": "pad"}
    moved = {**stored, "model": "local-dir:/elsewhere/model"}
    assert teacher_difference(stored, moved) is None
    assert teacher_difference(stored, {**moved, "crop_mode": "squash"}) == "teacher.crop_mode"
    assert teacher_difference(stored, {**moved, "weights_sha256": "cd" * 32}) == "teacher.model"
    assert teacher_difference({**stored, "model": "ViT-B-16"}, {**stored, "model": "ViT-L-14"}) == "teacher.model"


def test_non_finite_loss_stops_with_a_clear_message(caches, tmp_path, monkeypatch):
    monkeypatch.setattr(DistillationLoss, "loss_union", lambda self, logits, batch: logits.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 0 .*--lr"):
        train(caches["train"], tmp_path / "nan", BASE)


def test_union_branch_ranks_held_out_pairs_like_the_teacher(caches, reference):
    out, _ = reference
    cache = open_cache(caches["test"])
    model, _ = load_student(out / "checkpoint", cache, torch.device("cpu"))
    untrained = build_model(BASE, cache, torch.device("cpu")).eval()
    block = CacheReader(cache, "squash").read(0, cache.num_images)
    batch = block.to_batch(torch.from_numpy(object_class_mask(cache)), torch.device("cpu"))
    teacher = block.union_score.astype(np.float32)
    mask = batch.class_mask.numpy()

    def mean_rho(net):
        with torch.no_grad():
            student = net(batch)["union"].numpy()
        return np.mean([spearman(student[p, mask[p]], teacher[p, mask[p]]) for p in range(len(teacher))])
    trained, chance = mean_rho(model), mean_rho(untrained)
    assert trained > 0.6 and trained > chance + 0.4, (trained, chance)


# -- predict and evaluate -------------------------------------------------------------------

def test_predict_then_evaluate_end_to_end(caches, reference, tmp_path):
    out, _ = reference
    maps = {}
    for model, kw in (("student", {"checkpoint": out / "checkpoint"}), ("teacher", {}), ("random", {})):
        res, report = run_eval(caches["test"], model=model, results=tmp_path / f"{model}.json",
                               predictions=tmp_path / f"{model}.npz", **kw)
        maps[model] = res.summary()["default"]["full"]
        saved = json.loads((tmp_path / f"{model}.json").read_text())
        assert saved["model"] == model and saved["results"]["num_images"] == 64
        assert set(saved["results"]["default"]) == {"full", "rare", "non_rare"}
        pred = read_predictions(tmp_path / f"{model}.npz")
        assert len(pred) == report["num_predictions"] > 0 and pred.box_format == "coord"
    student = json.loads((tmp_path / "student.json").read_text())
    assert student["config"] == BASE.to_dict() and student["epoch"] == BASE.epochs
    assert maps["teacher"] > 2 * maps["random"] and maps["student"] > 1.5 * maps["random"], maps
    top, _ = run_eval(caches["test"], model="teacher", top_k=3)
    assert top.num_predictions <= 3 * 64


# -- the command line -----------------------------------------------------------------------

def test_cli_train_predict_eval(caches, reference, tmp_path):
    runner = CliRunner()
    out, _ = reference
    r = runner.invoke(hoi_main, ["train", "--cache", str(caches["train"]), "--output", str(tmp_path / "run"),
                                  "--epochs", "1", "--hidden-dim", "16", "--no-global-branch", "--no-progress",
                                  "--threads", "1"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run" / "checkpoint" / "checkpoint.json").read_text())
    assert meta["config"]["global_branch"] is False and meta["config"]["hidden_dim"] == 16
    assert meta["cache"]["fingerprint"] == open_cache(caches["train"]).fingerprint and meta["package_version"]
    r = runner.invoke(hoi_main, ["train", "--cache", str(caches["test"]), "--output", str(tmp_path / "run"),
                                 "--resume"])
    assert r.exit_code == 1 and "dataset.split" in r.output
    r = runner.invoke(hoi_main, ["predict", "--cache", str(caches["test"]), "--checkpoint", str(out / "checkpoint"),
                                    "-o", str(tmp_path / "p.json.gz")])
    assert r.exit_code == 0 and "predictions (student)" in r.output, r.output
    again = ["predict", "--cache", str(caches["test"]), "--scorer", "teacher", "-o", str(tmp_path / "p.json.gz")]
    r = runner.invoke(hoi_main, again)
    assert r.exit_code == 2 and "p.json.gz exists; pass --overwrite" in r.output
    assert runner.invoke(hoi_main, again + ["--overwrite"]).exit_code == 0
    r = runner.invoke(hoi_main, ["eval", "--cache", str(caches["test"]), "--scorer", "teacher", "--output",
                                 str(tmp_path / "r.json")])
    assert r.exit_code == 0 and "default" in r.output and (tmp_path / "r.json").exists(), r.output
    r = runner.invoke(hoi_main, ["eval", "--cache", str(caches["train"]), "--scorer", "teacher"])
    assert r.exit_code == 1 and "no ground truth" in r.output


def test_eval_takes_known_object_images_from_anno_mat(caches, tmp_path):
    """Image labels that call every image positive for every class keep every detection in
    Known-Object (so it equals Default); results say which definition was used."""
    import scipy.io

    cache = open_cache(caches["test"])
    names = [str(n) for n in cache.read("images/file_name")]
    ls = labelspace_of(cache)
    cells = np.empty((len(names), 1), dtype=object)
    cells[:, 0] = names[::-1]  # anno.mat's own image order
    list_action = np.empty((ls.num_classes, 1), dtype=[("nname", object), ("vname", object)])
    for c, (v, o) in enumerate(ls.hoi):
        list_action[c, 0] = (ls.objects[o], ls.verbs[v])
    scipy.io.savemat(tmp_path / "anno.mat", {"anno_test": np.ones((ls.num_classes, len(names))), "list_test": cells,
                                             "list_action": list_action})
    r = CliRunner().invoke(hoi_main, ["eval", "--cache", str(caches["test"]), "--scorer", "teacher", "--image-labels",
                                      str(tmp_path / "anno.mat"), "--output", str(tmp_path / "labels.json")])
    assert r.exit_code == 0, r.output
    _, stand_in = run_eval(caches["test"], model="teacher")
    labels = json.loads((tmp_path / "labels.json").read_text())["results"]
    assert labels["known_object_images"] == "anno.mat image labels"
    assert stand_in["results"]["known_object_images"].endswith("(stand-in)")
    assert labels["known_object"]["full"] == pytest.approx(labels["default"]["full"])
    assert labels["num_predictions"] == stand_in["results"]["num_predictions"]


def test_cli_ablate_prints_one_table_and_rows_in_parallel_give_the_same_numbers(caches, tmp_path):
    """Two rows at a time, each in a worker process on one thread: the same table as one
    row after the other in this process."""
    r = CliRunner().invoke(hoi_main, ["ablate", "--train-cache", str(caches["train"]),
                                        "--test-cache", str(caches["test"]), "--output", str(tmp_path / "par"),
                                        "--epochs", "1", "--hidden-dim", "16",
                                        "--no-progress", "--threads", "1", "--jobs", "2"])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "par" / "ablation.json").read_text())
    assert len(rows) == len(BASELINES) + len(GRID) and format_ablation(rows) in r.output
    for row in GRID:
        assert row.label in r.output
        assert (tmp_path / "par" / row.name / "checkpoint" / "checkpoint.json").exists()
    threads = torch.get_num_threads()
    serial = ablate(caches["train"], caches["test"], tmp_path / "serial",
                    TrainConfig(epochs=1, hidden_dim=16, progress=False, threads=1), jobs=1)
    assert torch.get_num_threads() == threads  # the caller's thread count is left as it was
    assert [x["summary"] for x in serial] == [x["summary"] for x in rows]


def test_grid_rows_set_every_switch_themselves():
    """Options given to `hoi ablate` (here early fusion without the global branch) must not make
    a row's configuration invalid or change which branches a row compares."""
    odd = BASE.replace(fusion="early", global_branch=False)
    for row in GRID:
        assert odd.replace(**row.overrides).validated() == BASE.replace(**row.overrides).validated()


def test_checkpoint_of_the_earlier_one_adapter_student_is_refused_with_the_fix(reference, tmp_path):
    import shutil

    out, _ = reference
    old = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", old)
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["config"]["adapters"]
    (old / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="retrain it"):
        load_student(old, None, torch.device("cpu"))  # refused on reading, before the cache is looked at


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["config"].update(hidden_dim="256"), r"hidden_dim is '256' \(str\); it must be an integer"),
    (lambda m: m["config"].update(hidden_dim=256.0), r"hidden_dim is 256.0 \(float\)"),
    (lambda m: m["config"].update(hidden_dim=None), r"hidden_dim is None"),
    (lambda m: m["config"].update(temperature="0.01"), r"temperature is '0.01' \(str\); it must be a number"),
    (lambda m: m["config"].update(union_branch="false"), r"union_branch is 'false' \(str\); it must be a boolean"),
    (lambda m: m["config"].update(hidden_dim=10 ** 7), r"hidden_dim must be at most 8192, not 10000000"),
    (lambda m: m.pop("cache"), r"field cache is None"),
    (lambda m: m.update(epoch="2"), r"field epoch is '2'"),
    (lambda m: m["cache"].pop("teacher"), r"field cache.teacher is None"),
])
def test_tampered_checkpoint_json_is_refused_by_field(reference, tmp_path, edit, words):
    import shutil

    out, _ = reference
    bad = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", bad)
    meta = json.loads((bad / "checkpoint.json").read_text())
    edit(meta)
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=words):
        load_student(bad, None, torch.device("cpu"))  # refused on reading, before anything is built


def test_weights_of_other_shapes_are_refused_from_the_header(caches, reference, tmp_path):
    import shutil

    from safetensors.torch import save_file

    out, weights = reference
    bad = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", bad)
    name = next(k for k, v in weights.items() if v.ndim == 2)
    save_file({**weights, name: torch.zeros(3, 3)}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor {name} is \\(3, 3\\) in the file"):
        load_student(bad, open_cache(caches["test"]), torch.device("cpu"))
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_student(bad, open_cache(caches["test"]), torch.device("cpu"))


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(caches, tmp_path, monkeypatch):
    import errno

    from trainer import checkpoint as ckpt_module

    real, calls = ckpt_module.save_file, []

    def fill_disk(tensors, path):
        calls.append(path)
        if len(calls) > 2:  # the second epoch's weights
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(ckpt_module, "save_file", fill_disk)
    with pytest.raises(CheckpointError, match="epoch 2 .*No space left.*previous checkpoint in .* is intact"):
        train(caches["train"], tmp_path / "run", BASE.replace(epochs=2))
    monkeypatch.setattr(ckpt_module, "save_file", real)
    meta = ckpt_module.read_meta(tmp_path / "run" / "checkpoint")
    assert meta["epoch"] == 1 and not (tmp_path / "run" / "checkpoint.tmp").exists()
    assert train(caches["train"], tmp_path / "run", resume=True, epochs=2)["epoch"] == 2


def test_resume_after_an_interrupted_first_save_says_to_start_again(caches, tmp_path):
    (tmp_path / "run" / "checkpoint.tmp").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint.tmp" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(CheckpointError, match="nothing to resume from .*without --resume"):
        train(caches["train"], tmp_path / "run", resume=True)
    assert not (tmp_path / "run" / "checkpoint.tmp").exists()  # what the cut save left is gone


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("grid, out", [((8, 8), 3), ((6, 10), 2)])
def test_roi_align_as_a_matrix_product_equals_torchvision(grid, out, sparse):
    """Values and gradients, for boxes inside, across and outside the map, degenerate ones,
    and images without boxes; the sparse (CPU) and dense (CUDA) products alike."""
    from torchvision.ops import roi_align as reference

    from trainer.roi import roi_align, roi_pool

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, *grid, dtype=torch.float64, generator=g, requires_grad=True)
    k = 120
    image = torch.randint(0, 6, (k,), generator=g).double()           # image 6 has no box
    lo = torch.rand(k, 2, generator=g, dtype=torch.float64) * (grid[1] + 4) - 2
    boxes = torch.cat([lo, lo + torch.rand(k, 2, generator=g, dtype=torch.float64) * 7], 1)
    boxes[:4] = torch.tensor([[0.0, 0, grid[1], grid[0]], [3, 3, 3, 3], [-4, -4, -1.5, -1.2], [2, 1, 2.2, 9]])
    rois = torch.cat([image[:, None], boxes], 1)
    ref = reference(x, rois, out, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    ours = roi_align(x, rois, out, sampling=2, sparse=sparse)
    assert torch.allclose(ours, ref, atol=1e-12)
    up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (g_ref,), (g_ours,) = torch.autograd.grad(ref, x, up), torch.autograd.grad(ours, x, up)
    assert torch.allclose(g_ours, g_ref, atol=1e-12)
    assert roi_align(x, rois[:0], out, sparse=sparse).shape == (0, 5, out, out)
    # coverage: what a map of ones pools to (1 inside the map, less where samples fall outside)
    _, coverage, _ = roi_pool(torch.ones(7, *grid, 1, dtype=torch.float64), rois, out, sparse=sparse)
    ones = reference(torch.ones(7, 1, *grid, dtype=torch.float64), rois, out, 1.0, 2, aligned=True)
    assert torch.allclose(coverage, ones.flatten(1), atol=1e-12)
    assert coverage[0].eq(1).all() and coverage[2].eq(0).all()
    # each image's mean over the grid, rows of the same product: values and gradients
    cl = x.permute(0, 2, 3, 1)
    for some in (rois, rois[:0]):
        pooled, _, mean = roi_pool(cl, some, out, sparse=sparse, with_mean=True)
        assert torch.allclose(mean, x.mean((2, 3)), atol=1e-12)
        up_p, up_m = torch.randn(pooled.shape, dtype=torch.float64), torch.randn(mean.shape, dtype=torch.float64)
        (g_ours,) = torch.autograd.grad((pooled * up_p).sum() + (mean * up_m).sum(), x)
        want = reference(x, some, out, 1.0, 2, aligned=True).flatten(2).transpose(1, 2)
        (g_want,) = torch.autograd.grad((want * up_p).sum() + (x.mean((2, 3)) * up_m).sum(), x)
        assert torch.allclose(g_ours, g_want, atol=1e-12)


def test_global_only_caches_serve_students_and_refuse_what_needs_union_scores(caches, reference, tmp_path):
    from cache.store import CacheError

    kw = dict(num_images=40, pairs_per_image=6, split="test", levels=("global",), **WORLD)
    test_global = make_synthetic_cache(tmp_path / "test_global", seed=1, **kw)
    train_global = make_synthetic_cache(tmp_path / "train_global", seed=0, with_gt=False,
                                        **{**kw, "split": "train"})
    with pytest.raises(CacheError, match="holds no union level.*the union loss.*--levels all"):
        train(train_global, tmp_path / "all", BASE.replace(epochs=1))
    assert not (tmp_path / "all" / "checkpoint").exists()
    out = train(train_global, tmp_path / "glob", BASE.replace(epochs=1, **GRID[0].overrides))  # no union level needed
    assert out["epoch"] == 1
    with pytest.raises(CacheError, match="holds no union level.*teacher baseline"):
        predict(test_global, model="teacher")
    ref_out, _ = reference  # a student trained with both levels predicts from the global level alone
    pred, _ = predict(test_global, checkpoint=ref_out / "checkpoint")
    assert len(pred) > 0


def test_a_second_training_run_on_the_same_folder_is_refused_naming_the_holder(caches, tmp_path):
    import os
    import socket

    from hoicore.lock import LockError, exclusive

    with exclusive(tmp_path / "run", what="training"):  # another run holds it
        holder = f"in use by another training run .*pid {os.getpid()}.*{socket.gethostname()}"
        with pytest.raises(LockError, match=holder):
            train(caches["train"], tmp_path / "run", BASE.replace(epochs=1))
        with pytest.raises(LockError):
            engine.train_or_reuse(caches["train"], tmp_path / "run", BASE.replace(epochs=1))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    train(caches["train"], tmp_path / "run", BASE.replace(epochs=1))  # free again
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("context", ["conv", "depthwise", "none"])
def test_adapted_map_pools_what_the_whole_map_pools(context):
    """The student pools each term of the adapted map and mixes the pooled rows; the result
    is the map ``x + context(gelu(x))`` itself, pooled by the mean and by RoI-align."""
    from torchvision.ops import roi_align as reference

    from trainer.roi import DenseAdapter

    torch.manual_seed(0)
    adapter = DenseAdapter(6, 8, context).double()
    dense = torch.randn(3, 5, 7, 6, dtype=torch.float64)
    x = adapter.proj(adapter.norm(dense)).permute(0, 3, 1, 2)         # the map as first defined, [B, F, H, W]
    whole = x if adapter.context is None else x + adapter.context(torch.nn.functional.gelu(x))
    rois = torch.tensor([[0, 0.0, 0, 7, 5], [2, -2, 1, 3, 9], [1, 2.5, 1.5, 4, 3], [2, -5, -5, -2, -2]],
                        dtype=torch.float64)
    got = adapter(dense)
    assert torch.allclose(got.full().permute(0, 3, 1, 2), whole, atol=1e-12)
    pooled, mean = got.pool(rois, 3, 2, with_mean=True)
    assert torch.allclose(mean, whole.mean((2, 3)), atol=1e-12)
    want = reference(whole, rois, 3, spatial_scale=1.0, sampling_ratio=2, aligned=True)   # [K, F, 3, 3]
    assert torch.allclose(pooled.transpose(1, 2), want.flatten(2), atol=1e-12)
    assert got.pool(rois, 3, 2)[1] is None


@pytest.mark.parametrize("overrides, branches", [
    ({}, {"global", "ho", "union"}), ({"fusion": "early"}, {"global", "fused"}),
    ({"adapters": "shared", "context": "conv"}, {"global", "ho", "union"}),
    ({"residual": True}, {"global", "ho", "union"}), ({"global_branch": False, "ho_branch": False}, {"union"})])
def test_the_student_reads_what_the_plain_pooling_reads(overrides, branches, monkeypatch):
    """Student.embed through the optimised pooling (terms pooled apart, each distinct box
    once, RoI-align as a product) equals it through the plain form: the whole adapted map,
    every pair's box RoI-aligned by torchvision."""
    from trainer import model
    from trainer.batch import Batch
    from trainer.roi import pool_boxes_reference

    torch.manual_seed(0)
    student = model.Student(TrainConfig(hidden_dim=8, **overrides), torch.randn(5, 6)).double()
    for w in student.parameters():  # no zero-initialised head: every part must show
        torch.nn.init.normal_(w, std=0.5)
    P = 7
    corner = torch.rand(P, 3, 2, dtype=torch.float64) * 5 - 1
    grid_boxes = torch.cat([corner, corner + torch.rand(P, 3, 2, dtype=torch.float64) * 4 + 0.5], 2)
    grid_boxes[1, 0] = grid_boxes[0, 0]  # one human in two pairs of an image: pooled once by the fast path
    norm = torch.rand(P, 2, 2, dtype=torch.float64) * 0.5
    batch = Batch(dense=torch.randn(3, 6, 7, 6, dtype=torch.float64), global_score=None,
                  pair_image=torch.tensor([0, 0, 1, 1, 1, 2, 2]), grid_boxes=grid_boxes,
                  norm_boxes=torch.cat([norm, norm + 0.3], 2), object=torch.zeros(P, dtype=torch.int64),
                  det_score=torch.rand(P, 2), union_score=None, class_mask=torch.ones(P, 5, dtype=torch.bool))
    got = student.embed(batch)
    monkeypatch.setattr(model, "pool_boxes", pool_boxes_reference)
    want = student.embed(batch)
    assert set(got) == set(want) == branches
    for k in got:
        assert torch.allclose(got[k], want[k], atol=1e-9), k


@pytest.mark.parametrize("tuned", [True, False])
def test_a_streamed_run_says_when_its_process_lacks_the_heap_tunables(caches, tmp_path, monkeypatch, caplog, tuned):
    from hoicore.memory import with_heap_tunables, without_heap_tunables

    env = (with_heap_tunables if tuned else without_heap_tunables)(dict(os.environ))
    monkeypatch.setattr(os, "environ", env)
    with caplog.at_level("INFO", logger="trainer.engine"):
        train(caches["train"], tmp_path / "run", BASE.replace(epochs=1, in_memory="no"))
    assert ("heap tunables" in caplog.text) is not tuned


def test_a_flipped_byte_in_the_weights_is_refused_by_the_recorded_hash(caches, reference, tmp_path):
    import shutil

    out, _ = reference
    copy = tmp_path / "checkpoint"
    shutil.copytree(out / "checkpoint", copy)
    meta = json.loads((copy / "checkpoint.json").read_text())
    assert set(meta["files_sha256"]) == {"model.safetensors", "optimizer.safetensors"}
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # inside a tensor's bytes: safetensors itself would load it
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: its bytes are not those checkpoint.json recorded"):
        load_student(copy, open_cache(caches["test"]), torch.device("cpu"))
