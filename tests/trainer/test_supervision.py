"""The supervised references (``--supervision image-labels|pair-labels``): labels from the
cache's ground truth, candidate pairs matched by the evaluation's rule, unseen classes
removed, caches without ground truth refused, and the default path never reading a label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.synthetic_cache import make_synthetic_cache
from cache.store import open_cache
from hoidata import boxes as B
from hoidata import ragged
from hoidata.evaluation import overlap_pixel1
from hoidata.pair_labels import image_labels, match_pairs, pair_labels
from trainer.cache_info import object_class_mask, seen_classes
from trainer.checkpoint import load_weights, read_meta
from trainer.config import ConfigError, TrainConfig
from trainer.engine import build_model, train
from trainer.loader import CacheReader, TrainData
from trainer.losses import DistillationLoss, label_kl
from trainer.model import masked_softmax, pair_scores

WORLD = dict(num_classes=24, embed_dim=32, grid=(8, 8), images_per_shard=32, image_chunk=8, pair_chunk=64)
BASE = TrainConfig(epochs=2, batch_size=16, hidden_dim=32, lr=3e-3, progress=False, threads=1, device="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    return {gt: make_synthetic_cache(root / f"train-{gt}", num_images=48, pairs_per_image=6, seed=0, split="train",
                                     with_gt=gt, **WORLD) for gt in (True, False)}


# -- matching candidate pairs to ground truth -----------------------------------------------

def random_boxes(rng, n: int) -> np.ndarray:
    xy = rng.uniform(0, 60, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(8, 40, (n, 2))], 1).astype(np.float32)


def brute_force(pair_offsets, bh, bo, gt_offsets, gh, go):
    """Every (pair, gt) of one image, one at a time, IoU in the evaluation's own arithmetic."""
    def px(box):  # coord -> the evaluation's 1-based inclusive pixels
        return B.convert(box, "coord", "pixel1")
    found = []
    for i in range(len(pair_offsets) - 1):
        for p in range(pair_offsets[i], pair_offsets[i + 1]):
            for g in range(gt_offsets[i], gt_offsets[i + 1]):
                ov = min(overlap_pixel1(px(bh[p]), px(gh[g])), overlap_pixel1(px(bo[p]), px(go[g])))
                if ov >= 0.5:
                    found.append((p, g))
    return found


@pytest.mark.parametrize("seed", range(5))
def test_matching_equals_a_brute_force_reference_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    n = 12
    pair_counts, gt_counts = rng.integers(0, 9, n), rng.integers(0, 5, n)
    pair_offsets, gt_offsets = ragged.offsets(pair_counts), ragged.offsets(gt_counts)
    gh, go = random_boxes(rng, gt_offsets[-1]), random_boxes(rng, gt_offsets[-1])
    # candidates: jittered copies of the image's ground truth (many match, some barely) and random boxes
    owner = ragged.owners(pair_counts)
    bh, bo = random_boxes(rng, pair_offsets[-1]), random_boxes(rng, pair_offsets[-1])
    for p, i in enumerate(owner):
        if gt_counts[i] and rng.random() < 0.7:
            g = gt_offsets[i] + rng.integers(gt_counts[i])
            bh[p] = gh[g] + rng.normal(0, 3, 4)
            bo[p] = go[g] + rng.normal(0, 3, 4)
    pair, gt = match_pairs(pair_offsets, bh, bo, gt_offsets, gh, go)
    want = brute_force(pair_offsets, bh, bo, gt_offsets, gh, go)
    assert list(zip(pair.tolist(), gt.tolist())) == want
    assert len(want) > 0  # the jittered copies make the comparison say something

    hoi = rng.integers(0, 5, gt_offsets[-1])
    labels = pair_labels(pair_offsets, bh, bo, gt_offsets, gh, go, hoi, 5)
    expect = np.zeros_like(labels)
    for p, g in want:
        expect[p, hoi[g]] = True
    np.testing.assert_array_equal(labels, expect)
    img = image_labels(gt_offsets, hoi, 5)
    for i in range(n):
        assert set(np.flatnonzero(img[i])) == set(hoi[gt_offsets[i]:gt_offsets[i + 1]].tolist())


def test_a_match_needs_both_boxes_at_half_overlap():
    one = np.array([0, 1])
    gt = np.array([[0, 0, 10, 10]], np.float32)
    far = np.array([[30, 30, 40, 40]], np.float32)
    assert len(match_pairs(one, gt, gt, one, gt, gt)[0]) == 1
    assert len(match_pairs(one, gt, far, one, gt, gt)[0]) == 0  # the human matches, the object does not
    assert len(match_pairs(one, far, gt, one, gt, gt)[0]) == 0


# -- labels read from the cache ----------------------------------------------------------------

def test_labels_of_the_cache_match_its_ground_truth(caches):
    cache = open_cache(caches[True])
    block = CacheReader(cache, "squash", ("image_labels", "pair_labels")).read(0, 16)
    gt_off = cache.read("gt/offsets")
    hoi = cache.read("gt/hoi")
    for k, i in enumerate(block.image):
        assert set(np.flatnonzero(block.image_labels[k])) == set(hoi[gt_off[i]:gt_off[i + 1]].tolist())
    # the synthetic detector jitters the true boxes a little: most candidates match one pair
    assert 0 < block.pair_labels.any(1).mean() < 1


def test_unseen_classes_are_absent_from_every_label(caches):
    cache = open_cache(caches[True])
    seen = seen_classes(cache, "unseen_verb")
    assert (~seen).any()
    config = BASE.replace(supervision="pair-labels", unseen="unseen_verb")
    data = TrainData(cache, config, "squash")
    full = CacheReader(cache, "squash", ("pair_labels",)).read_all(256)
    unseen_only = full.pair_labels.any(1) & ~(full.pair_labels & seen).any(1)
    assert unseen_only.any()  # pairs whose every class is unseen exist, and become negatives below
    for block in data.epoch(0):
        assert not block.pair_labels[:, ~seen].any() and not block.image_labels[:, ~seen].any()
        rows = np.searchsorted(full.pair_row, block.pair_row)
        np.testing.assert_array_equal(block.pair_labels, full.pair_labels[rows] & seen)
        assert not block.pair_labels[unseen_only[rows]].any()


@pytest.mark.parametrize("mode", ["image-labels", "pair-labels"])
def test_a_cache_without_ground_truth_is_refused_by_name(caches, mode, tmp_path):
    with pytest.raises(ConfigError, match=f"{caches[False]}.*holds no ground truth.*--supervision {mode} needs it"
                                          ".*--annotations"):
        train(caches[False], tmp_path / "run", BASE.replace(supervision=mode))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_default_path_reads_no_label(caches, tmp_path):
    """--supervision clip trains on a cache without ground truth, to the same weights as on the
    same cache with it: nothing it computes comes from a label."""
    a = train(caches[False], tmp_path / "a", BASE)
    b = train(caches[True], tmp_path / "b", BASE)
    wa, wb = load_weights(tmp_path / "a" / "checkpoint"), load_weights(tmp_path / "b" / "checkpoint")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["loss"] == b["loss"]
    assert read_meta(tmp_path / "a" / "checkpoint")["config"]["supervision"] == "clip"


@pytest.mark.parametrize("mode", ["image-labels", "pair-labels"])
def test_labelled_modes_train_and_say_so(caches, mode, tmp_path):
    metrics = train(caches[True], tmp_path / "run", BASE.replace(supervision=mode))
    assert np.isfinite(metrics["loss"])
    assert read_meta(tmp_path / "run" / "checkpoint")["config"]["supervision"] == mode
    pair_loss = "loss_ho" if mode == "pair-labels" else "loss_mil"
    assert pair_loss in metrics
    assert TrainConfig.from_dict({k: v for k, v in BASE.to_dict().items() if k != "supervision"}).supervision == "clip"


# -- losses and scores -------------------------------------------------------------------------

def test_label_kl_is_the_cross_entropy_to_the_labels_less_their_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 6)
    labels = torch.rand(5, 6) < 0.4
    labels[:, 0] = True
    support = torch.ones(5, 6, dtype=torch.bool)
    target = labels.float() / labels.sum(1, keepdim=True)
    ce = -(target * torch.log_softmax(logits, -1)).sum(1)
    entropy = -(target * torch.log(target.clamp(min=1e-30))).sum(1)
    assert torch.allclose(label_kl(logits, labels, support), (ce - entropy).mean())
    matched = torch.log(target.clamp(min=1e-30))  # a student already at the target
    assert label_kl(matched, labels, support).abs() < 1e-5


def test_a_negative_pair_is_taught_no_interaction(caches):
    """Under pair labels a pair that matches no ground truth has 'no interaction' as its whole
    target: its loss is -log of that share, and raising the logit lowers it."""
    cache = open_cache(caches[True])
    config = BASE.replace(supervision="pair-labels", global_branch=False, w_feature=0.0)
    block = CacheReader(cache, "squash", ("dense", "pair_labels")).read(0, 8)
    block.pair_labels[:] = False
    batch = block.to_batch(torch.from_numpy(object_class_mask(cache)), torch.device("cpu"))
    model = build_model(config, cache, torch.device("cpu"))
    crit = DistillationLoss(config)
    outputs, none = model(batch), model.none_logits()
    losses = crit(outputs, batch, model.embed(batch), none)
    logits = torch.cat([outputs["ho"].masked_fill(~batch.class_mask, float("-inf")),
                        none["ho"].expand(batch.num_pairs, 1)], 1)
    assert torch.allclose(losses["ho"], -torch.log_softmax(logits, -1)[:, -1].mean())
    losses["ho"].backward()
    assert none["ho"].grad < 0  # gradient descent raises 'no interaction'


def test_no_interaction_takes_its_share_of_every_pair_score():
    logits = torch.randn(4, 5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, 3:] = False
    none = torch.tensor(1.5)
    p = masked_softmax(logits, mask, none)
    full = torch.softmax(torch.cat([logits.masked_fill(~mask, float("-inf")), none.expand(4, 1)], 1), -1)
    assert torch.allclose(p, full[:, :-1]) and (p[~mask] == 0).all()
    assert torch.allclose(masked_softmax(logits, mask, torch.tensor(-1e4)), masked_softmax(logits, mask))
    outputs = {"ho": logits, "union": logits.flip(0)}
    both = pair_scores(outputs, mask, 0.5, {"ho": none, "union": none})
    assert torch.allclose(both, 0.5 * p + 0.5 * masked_softmax(logits.flip(0), mask, none))
