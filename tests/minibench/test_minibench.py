"""The bundled benchmark: renderer, label space, splits, simulated detector, small CLIP."""

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from hoidata.annotations import read_hicodet_json, write_hicodet_json
from hoidata.detections import load_detections, save_detections
from hoidata.labelspace import LabelSpace
from minibench import build, clip, clip_train, corpus, detector, labels, world

C = labels.NUM_CLASSES


@pytest.fixture
def one_thread():
    """Tiny batches on cores other jobs share: more torch threads than free cores spin in
    OpenMP barriers (measured 36 s instead of 2 s for the training test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def labelspace():
    # Expected train counts (the build counts the rendered train split instead).
    return labels.labelspace(np.round(labels.class_weights() / labels.class_weights().sum() * 5000))


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    """A small test split in which every class appears (the first C images start with class i)."""
    folder = tmp_path_factory.mktemp("minibench_test")
    return build.render_split("test", C + 20, seed=7, image_dir=folder, workers=1, min_per_class=1), folder


def test_renderer_is_deterministic_for_a_seed():
    def draw(seed):
        im, pairs = world.render(world.sample_scene(np.random.default_rng(seed), first_class=5))
        return np.asarray(im), pairs

    (a, pa), (b, pb), (c, _) = draw(11), draw(11), draw(12)
    assert a.shape == (world.SCENE_SIZE, world.SCENE_SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert [(p["hoi"], p["box_h"].tolist(), p["box_o"].tolist()) for p in pa] == \
           [(p["hoi"], p["box_h"].tolist(), p["box_o"].tolist()) for p in pb]
    assert not np.array_equal(a, c)


def test_label_space_schema_and_long_tail(labelspace, tmp_path):
    labelspace.save(tmp_path / "ls.json")
    ls = LabelSpace.load(tmp_path / "ls.json")
    assert ls.fingerprint == labelspace.fingerprint
    assert ls.objects[ls.human] == "person" and "no_interaction" in ls.verbs
    assert ls.prompts[ls.class_index(ls.verbs.index("ride"), ls.objects.index("bicycle"))] == \
        "a photo of a person riding a bicycle"
    assert ls.prompts[ls.class_index(ls.verbs.index("no_interaction"), ls.objects.index("umbrella"))] == \
        "a photo of a person and an umbrella"
    assert 0.15 < ls.rare.mean() < 0.4  # Rare and Non-rare both mean something
    assert ls.object_from_coco([1, 2, 37], "coco91").tolist() == [ls.human, 0, ls.objects.index("sports_ball")]
    clip.tokenize(ls.prompts)  # every prompt fits the model's text context
    clip.tokenize([corpus.caption(a, b) for a in range(C) for b in range(C) if a != b])  # and every alt text


def test_zero_shot_splits_are_of_hico_dets_kinds(labelspace):
    splits = labelspace.zero_shot_splits
    assert {k: v["setting"] for k, v in splits.items()} == {"rare_first": "RF-UC", "non_rare_first": "NF-UC",
                                                            "unseen_object": "UO", "unseen_verb": "UV"}
    counts = np.array(labelspace.train_counts)
    rf, nf = np.array(splits["rare_first"]["unseen"]), np.array(splits["non_rare_first"]["unseen"])
    assert len(rf) == len(nf) == labels.UNSEEN_COMPOSITIONS
    assert counts[rf].max() <= np.delete(counts, rf).min()          # the rarest
    assert counts[nf].min() >= np.delete(counts, nf).max()          # the most frequent
    assert labelspace.rare[rf].all() and not labelspace.rare[nf].any()
    uo = splits["unseen_object"]["unseen"]
    assert {labelspace.objects[o] for o in labelspace.hoi_object[uo]} == set(labels.UNSEEN_OBJECTS)
    assert len(uo) == int(np.isin(labelspace.hoi_object, [labelspace.objects.index(o)
                                                          for o in labels.UNSEEN_OBJECTS]).sum())
    # every verb of an unseen object still occurs with a seen object
    seen_verbs = set(np.delete(labelspace.hoi_verb, uo).tolist())
    assert set(labelspace.hoi_verb[uo].tolist()) <= seen_verbs
    uv = splits["unseen_verb"]["unseen"]
    assert {labelspace.verbs[v] for v in labelspace.hoi_verb[uv]} == set(labels.UNSEEN_VERBS) and len(uv) >= 3


def test_split_boxes_inside_images_and_every_class_in_test(test_split, labelspace, tmp_path):
    ann, folder = test_split
    assert len(ann) == C + 20 and (folder / ann.file_names[0]).is_file()
    for boxes in (ann.boxes_h, ann.boxes_o):
        assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= ann.sizes[ann.image_of_pair, 0])
        assert np.all(boxes[:, 3] <= ann.sizes[ann.image_of_pair, 1])
        assert np.all(boxes[:, 2:] > boxes[:, :2])
    assert set(ann.hoi.tolist()) == set(range(C))
    assert np.array_equal(labelspace.hoi_object[ann.hoi], ann.object)
    assert not np.any(ann.object == labelspace.human)
    write_hicodet_json(ann, labelspace, tmp_path / "instances_test.json")
    assert read_hicodet_json(tmp_path / "instances_test.json", labelspace).equals(ann)


def test_many_scenes_keep_boxes_inside():
    for i in range(150):
        _, pairs = world.render(world.sample_scene(np.random.default_rng([3, i])))
        for p in pairs:
            for b in (p["box_h"], p["box_o"]):
                assert 0 <= b[0] < b[2] <= world.SCENE_SIZE and 0 <= b[1] < b[3] <= world.SCENE_SIZE


def test_simulated_detector_writes_a_valid_file(test_split, labelspace, tmp_path):
    ann, _ = test_split
    dets = detector.simulate(ann, labelspace, seed=[0, 3])
    save_detections(dets, tmp_path / "dets.h5")
    back = load_detections(tmp_path / "dets.h5", labelspace)
    assert back.equals(dets) and len(back) == len(ann)
    assert back.attrs["detector"] == "minibench-simulated" and back.attrs["simulation"]["jitter"] > 0
    for i in range(len(ann)):
        d = back.of(i)
        assert np.all(np.diff(d["scores"]) <= 0)
        assert np.all(d["boxes"] >= 0) and np.all(d["boxes"][:, 2:] <= ann.sizes[i])
    # One detection per distinct box, not per pair; most are found, some are not, some are extra.
    entities = sum(len(detector.ground_truth_entities(ann, i, labelspace.human)[1]) for i in range(len(ann)))
    assert entities < 2 * ann.num_pairs
    assert 0.8 * entities < back.num_detections < 2 * entities
    assert detector.simulate(ann, labelspace, seed=[0, 3]).equals(dets)


def test_build_writes_the_layout_and_reuses_it(tmp_path):
    log = []
    build.build(tmp_path, n_train=30, n_val=20, n_test=30, web_scenes=6, workers=1, web=False, log=log.append)
    paths = build.layout(tmp_path)
    assert not paths["web"].exists() and len(log) == 6
    log.clear()
    build.build(tmp_path, n_train=30, n_val=20, n_test=30, web_scenes=6, workers=1, log=log.append)  # adds the web
    assert sum("reusing" in line for line in log) == 6 and log[-1].startswith("web:")
    ls = LabelSpace.load(paths["labelspace"])
    ann = read_hicodet_json(paths["instances_train"], ls)
    assert ls.train_counts == tuple(np.bincount(ann.hoi, minlength=C).tolist())
    assert len(load_detections(paths["detections_test"], ls)) == 30
    val = read_hicodet_json(paths["instances_val"], ls)
    assert len(val) == 20 and len(load_detections(paths["detections_val"], ls)) == 20
    assert not set(val.file_names) & set(ann.file_names)
    assert len(corpus.load_corpus(paths["web"])["kind"]) >= 5
    log.clear()
    build.build(tmp_path, n_train=30, n_val=20, n_test=30, web_scenes=6, workers=1, log=log.append)
    assert all("reusing" in line for line in log) and len(log) == 7
    with pytest.raises(build.BuildError, match="seed"):
        build.build(tmp_path, seed=1, n_train=30, n_val=20, n_test=30, web_scenes=6, workers=1)


def test_web_corpus_is_mostly_whole_scenes_captioned_like_alt_text():
    c = corpus.render_corpus(120, seed=3, workers=1)
    n = len(c["kind"])
    assert c["images"].shape == (n, corpus.CLIP_INPUT, corpus.CLIP_INPUT, 3) and c["caption"].shape == (n, 2)
    scenes = c["kind"] == corpus.KIND_SCENE
    assert 0.6 < scenes.mean() < 0.9                       # close-ups a minority
    two = c["caption"][:, 1] >= 0
    assert two.any() and not two[~scenes].any()            # two interactions named in some scenes only
    assert np.all(c["caption"][two, 0] != c["caption"][two, 1])
    assert corpus.caption(2, 14) == "a photo of a person riding a bicycle and a person walking a dog"
    again = corpus.render_corpus(120, seed=3, workers=2)   # the bytes do not depend on the workers
    assert all(np.array_equal(c[k], again[k]) for k in c)


def test_close_ups_are_framed_like_photos_not_cut_like_union_boxes():
    """A close-up keeps its subject whole with context around it, at the subject's aspect
    ratio (a square frame), where the teacher's union crop is the tight box squashed."""
    im = Image.new("RGB", (224, 224))
    subject = np.array([100.0, 60.0, 130.0, 160.0])          # a tall person and object: 30 x 100 px
    ImageDraw.Draw(im).rectangle([100, 60, 129, 159], fill=(255, 255, 255))
    for seed in range(20):
        crop = (np.asarray(world.photo_crop(im, subject, np.random.default_rng(seed), 100)) > 128).all(-1)
        rows, cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
        assert rows[0] > 0 and rows[-1] < 99 and cols[0] > 0 and cols[-1] < 99   # whole, with a margin
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert 55 <= height <= 90 and abs(width / height - 0.3) < 0.08          # not squashed
    tight = np.asarray(world.union_crop(im, subject[None, :][0], subject, 100)) > 128
    assert tight.mean() > 0.95                                 # the teacher's cut: the box fills the crop


def test_a_few_training_steps_lower_the_contrastive_loss(one_thread):
    c = corpus.render_corpus(20, seed=5, workers=1)
    tiny = {k: v[:16] for k, v in c.items()}
    model, losses = clip_train.train(tiny, steps=10, batch_size=16, lr=3e-4, warmup=3, augment=False, seed=0)
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.3  # the same batch every step (2.8 -> 1.3 measured): it must fit it
    assert model.logit_scale.exp().item() <= 100.0 + 1e-3


def test_clip_train_cli_writes_a_checkpoint_open_clip_loads(tmp_path, one_thread):
    clip_train.main(["--out", str(tmp_path), "--steps", "2", "--web-scenes", "4", "--eval-scenes", "3",
                     "--threads", "1", "--corpus", str(tmp_path / "web.npz")])
    assert (tmp_path / "web.npz").is_file() and (tmp_path / "minibench-vit.json").is_file()
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == 2
    model = open_clip.create_model("local-dir:" + str(tmp_path))
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["heldout_scenes"]["n"] == 3 and "top1_given_object" in record["heldout_union_crops"]
    # A larger input for a finer dense map: the positional embedding is interpolated on load.
    big, _, _ = clip.load(tmp_path / clip.WEIGHTS.name, image_size=256)
    assert big.visual.positional_embedding.shape == (16 * 16 + 1, 128)
    assert torch.equal(model.text_projection, big.text_projection)


def test_shipped_checkpoint_loads_offline_and_knows_scenes_and_union_crops(one_thread):
    """The shipped CLIP recognises HOIs in whole scenes and, less surely, in the union crops
    the teacher cuts (which it never saw in training: its web corpus is mostly scenes)."""
    open_clip.add_model_config(clip.CONFIG)
    model, _, preprocess = open_clip.create_model_and_transforms("minibench-vit", pretrained=str(clip.WEIGHTS))
    assert open_clip.get_tokenizer("minibench-vit").context_length == 20
    assert clip.WEIGHTS.stat().st_size < 20 * 2 ** 20
    # Same weights through open_clip's local-dir: form.
    other = open_clip.create_model("local-dir:" + str(clip.MODEL_DIR))
    assert torch.equal(model.logit_scale, other.logit_scale)
    held = corpus.render_heldout(60, seed=123, workers=1)  # measured: scenes 0.53 class mAP, crops 48% / 62%
    acc = clip.heldout_accuracy(model.eval(), held)
    scenes, unions = acc["scenes"], acc["union_crops"]
    assert scenes["class_map"] >= 0.35 and scenes["class_map"] > 4 * scenes["chance_class_map"]
    assert unions["n"] >= 120 and unions["top1"] >= 0.3 and unions["top1"] > 10 * unions["chance"]
    assert unions["top1_given_object"] >= 0.45
    record = json.loads((clip.MODEL_DIR / "training.json").read_text())
    assert record["heldout_scenes"]["class_map"] >= 0.3 and record["heldout_union_crops"]["top1"] >= 0.3
    by_size = record["heldout_scenes_by_input_size"]
    assert by_size["192"]["class_map"] > by_size["128"]["class_map"]  # why the demo's teacher sees 192 px
