"""The detector stage (`hoi detections run`) on tiny random models: label mapping, filters,
attributes, resuming, bad images, weights lookup; tiny-fcos; box AP@0.5; detector training."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

import pipeline.detection.stage as stage
from hoi.cli_detections import detections as cli
from hoicore.errors import InputError
from hoidata.annotations import Annotations
from hoidata.box_ap import average_precision, box_ap, ground_truth_boxes
from hoidata.detections import Detections, load_detections
from pipeline.detection.detector import DetectorError, hub_weights_path, load_detector
from pipeline.detection.options import DetectOptions
from pipeline.tiny_fcos.model import TinyFcosConfig, build_tiny_fcos, load_tiny_fcos, save_tiny_fcos
from pipeline.tiny_fcos.train import Sample, TrainSettings, train_detector
from tests.conftest import TINY

SSD = "ssdlite320_mobilenet_v3_large"  # the smallest torchvision detector (14 MB), fast at 320 px
# (file name, width, height, PIL mode) of the generated images; sorted by name, as the stage lists them
IMAGES = [("a.jpg", 64, 48, "RGB"), ("b.png", 80, 60, "RGB"), ("c.png", 50, 70, "L"), ("d.jpg", 72, 40, "RGB"),
          ("e.jpg", 40, 40, "RGB")]
OPTS = DetectOptions(progress=False, workers=1, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Image folders (good; good plus a corrupt file), a label space file, and weights."""
    root = tmp_path_factory.mktemp("stage")
    rng = np.random.default_rng(0)
    good, bad = root / "good", root / "bad"
    for folder in (good, bad):
        folder.mkdir()
        for name, w, h, mode in IMAGES:
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / name)
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (good / "notes.txt").write_text("not an image: not listed")
    ls_file = root / "tiny.json"
    ls_file.write_text(json.dumps(TINY))
    ssd = torchvision.models.get_model(SSD, weights=None, weights_backbone=None)
    torch.save(ssd.state_dict(), root / "ssd.pth")
    torch.manual_seed(0)
    # score_thresh 0: a random model then outputs boxes, so the real path has something to carry
    cfg = TinyFcosConfig(categories=("person", "ball", "unicorn"), min_size=64, max_size=96, score_thresh=0.0,
                         detections_per_img=20)
    save_tiny_fcos(build_tiny_fcos(cfg).eval(), cfg, root / "tiny-fcos")
    return {"root": root, "good": good, "bad": bad, "labelspace": ls_file, "ssd": root / "ssd.pth",
            "fcos": root / "tiny-fcos"}


def _run(tmp_path, files, ls, name="out.h5", folder="good", model="tiny-fcos", weights=None, **opts):
    weights = weights or (files["fcos"] if model == "tiny-fcos" else files["ssd"])
    options = DetectOptions(**{**OPTS.__dict__, **opts})
    return stage.run_detector(tmp_path / name, images=files[folder], model=model, weights=weights, labelspace=ls,
                              options=options)


# -- mapping and filters, on forced model outputs ---------------------------------------

def _forced(w: int, h: int) -> dict:
    """What the stubbed detector outputs for a w x h image (COCO-91 labels; see the test)."""
    rows = [  # (coco id, score, box)
        (1, 0.90, [10, 10, 30, 40]),        # person
        (1, 0.80, [11, 10, 30, 40]),        # person, IoU 0.95 with the first: NMS removes it
        (37, 0.70, [10, 10, 30, 40]),       # sports ball on the same box: another class, kept
        (12, 0.95, [0, 0, 5, 5]),           # id 12 is no COCO class: dropped
        (3, 0.85, [0, 0, 20, 20]),          # car: no object in the tiny label space, dropped
        (47, 0.03, [1, 1, 9, 9]),           # cup below the score threshold
        (47, 0.60, [-5, 2, w + 7, 8]),      # cup, clipped to [0, 2, w, 8]
        (1, 0.55, [w + 2, 0, w + 9, 9]),    # outside the image: zero area once clipped
        (47, 0.40, [30, 30, 35, 35]),       # three more cups: the cap of 4 keeps the first
        (47, 0.35, [1, 20, 6, 25]),
        (47, 0.30, [20, 1, 25, 6]),
    ]
    return {"labels": torch.tensor([r[0] for r in rows]), "scores": torch.tensor([r[1] for r in rows]),
            "boxes": torch.tensor([r[2] for r in rows], dtype=torch.float32)}


@pytest.fixture
def stubbed(monkeypatch):
    """Load the real detector, then make its forward output :func:`_forced` per image."""
    real = stage.load_detector

    def load(*args, **kw):
        det = real(*args, **kw)
        det.model.forward = lambda images: [_forced(x.shape[2], x.shape[1]) for x in images]
        return det
    monkeypatch.setattr(stage, "load_detector", load)


def test_coco91_mapping_threshold_nms_clip_and_cap(tmp_path, files, tiny_ls, stubbed):
    dets = _run(tmp_path, files, tiny_ls, model=SSD, score_threshold=0.05, nms_iou=0.5, max_per_image=4)
    person, ball, cup = (tiny_ls.objects.index(o) for o in ("person", "ball", "cup"))
    assert dets.file_names == [name for name, *_ in IMAGES]
    assert dets.sizes.tolist() == [[w, h] for _, w, h, _ in IMAGES]
    for i, (_, w, _, _) in enumerate(IMAGES):
        d = dets.of(i)
        assert d["labels"].tolist() == [person, ball, cup, cup]
        np.testing.assert_allclose(d["scores"], [0.9, 0.7, 0.6, 0.4], rtol=1e-6)
        np.testing.assert_array_equal(d["boxes"], np.array([[10, 10, 30, 40], [10, 10, 30, 40], [0, 2, w, 8],
                                                            [30, 30, 35, 35]], np.float32))
    # Without our NMS the near-duplicate person stays; without the cap the last cups too.
    loose = _run(tmp_path, files, tiny_ls, name="loose.h5", model=SSD, score_threshold=0.05, nms_iou=1.0,
                 max_per_image=100)
    assert loose.of(0)["labels"].tolist() == [person, person, ball, cup, cup, cup, cup]
    np.testing.assert_allclose(loose.of(0)["scores"], [0.9, 0.8, 0.7, 0.6, 0.4, 0.35, 0.3], rtol=1e-6)


# -- attributes, and what reads the file ---------------------------------------------------

def test_attributes_record_the_run_and_load_detections_reads_it(tmp_path, files, tiny_ls, stubbed):
    _run(tmp_path, files, tiny_ls, model=SSD, score_threshold=0.1, nms_iou=0.6, max_per_image=7)
    dets = load_detections(tmp_path / "out.h5", tiny_ls)  # checks the label space's fingerprint
    a = dets.attrs
    assert a["weights_sha256"] == hashlib.sha256(files["ssd"].read_bytes()).hexdigest()
    assert a["detector"] == SSD and a["weights"] == str(files["ssd"].absolute())
    assert (a["score_threshold"], a["nms_iou"], a["max_per_image"]) == (0.1, 0.6, 7)
    assert a["nms"] == {"iou": 0.6, "per_class": True, "applied": "after the detector's own"}
    assert a["labelspace"] == "tiny" and a["labelspace_fingerprint"] == tiny_ls.fingerprint
    assert a["box_format"] == "coord" and a["category_ids"] == "coco91"
    assert a["detector_settings"]["score_thresh"] == 0.001 and a["detector_settings"]["nms_thresh"] == 0.55
    assert a["input_sizes"]["transform.fixed_size"] == [320, 320]
    assert (a["device"], a["precision"], a["batch_size"]) == ("cpu", "fp32", OPTS.batch_size)
    assert a["torch_version"] == str(torch.__version__) and a["torchvision_version"] == torchvision.__version__
    assert a["hoidata_version"] and a["skipped_images"] == []
    assert a["run_settings"]["weights_sha256"] == a["weights_sha256"]
    assert not stage.wip_path(tmp_path / "out.h5").exists()


@pytest.mark.parametrize("bad, message", [
    ({"on_error": "ignore"}, "on_error must be one of fail, skip, not 'ignore'"),
    ({"precision": "fp8"}, "precision must be one of auto, fp32, fp16, bf16, not 'fp8'"),
    ({"max_per_image": 0}, "max_per_image must be at least 1, not 0"),
    ({"chunk_size": 0}, "chunk_size must be at least 1, not 0"),
    ({"nms_iou": 0.0}, "nms_iou must be above 0, not 0.0"),
    ({"score_threshold": 1.5}, "score_threshold must be at most 1, not 1.5"),
])
def test_a_bad_option_is_refused_naming_it(bad, message):
    with pytest.raises(InputError, match=f"^{message}$"):
        DetectOptions(**bad)


def test_the_cli_options_are_the_dataclass_fields(tmp_path, files):
    """Each DetectOptions field is an option of ``hoi detections run``, its default the field's,
    its bounds enforced by click before anything runs."""
    params = {p.name: p for p in cli.commands["run"].params}
    for f in dataclasses.fields(DetectOptions):
        assert params[f.name].default == f.default and params[f.name].help == f.metadata["help"]
    res = CliRunner().invoke(cli, ["run", "--images", str(files["good"]), "--detector", "tiny-fcos", "--nms-iou", "0",
                                   "-o", str(tmp_path / "never.h5")])
    assert res.exit_code == 2 and "--nms-iou" in res.output and "0<x<=1" in res.output


def test_tiny_fcos_real_forward_through_the_cli(tmp_path, files, tiny_ls):
    out = tmp_path / "cli.h5"
    res = CliRunner().invoke(cli, ["run", "--images", str(files["good"]), "--detector", "tiny-fcos",
                                   "--detector-weights", str(files["fcos"]), "--labelspace", str(files["labelspace"]),
                                   "--device", "cpu", "--score-threshold", "0", "--max-per-image", "5", "--no-progress",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    dets = load_detections(out, tiny_ls)
    assert dets.num_detections > 0 and dets.counts.max() <= 5
    # "unicorn" has no object: only person and ball come out, under the label space's indices
    assert set(dets.labels.tolist()) <= {tiny_ls.objects.index("person"), tiny_ls.objects.index("ball")}
    w, h = dets.sizes[dets.image_of_detection].T
    assert (dets.boxes >= 0).all() and (dets.boxes[:, 2] <= w).all() and (dets.boxes[:, 3] <= h).all()
    for i in range(len(dets)):
        assert (np.diff(dets.of(i)["scores"]) <= 0).all()
    a = dets.attrs
    assert a["weights_sha256"] == hashlib.sha256((files["fcos"] / "detector.safetensors").read_bytes()).hexdigest()
    assert a["detector_config"]["categories"] == ["person", "ball", "unicorn"] and a["category_ids"] == "categories"
    # The weights file instead of the folder: the same model
    model, cfg, path = load_tiny_fcos(files["fcos"] / "detector.safetensors")
    assert cfg.categories == ("person", "ball", "unicorn") and path.name == "detector.safetensors"


# -- resuming --------------------------------------------------------------------------------

def _crash_after_first_chunk(monkeypatch):
    real, calls = stage._save_chunk, []

    def save(path, arrays):
        if calls:
            raise KeyboardInterrupt("killed")  # as a kill would: after the first chunk is safely written
        calls.append(path)
        real(path, arrays)
    monkeypatch.setattr(stage, "_save_chunk", save)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, files, tiny_ls, monkeypatch):
    settings = dict(chunk_size=2, batch_size=2, score_threshold=0.0)
    whole = _run(tmp_path, files, tiny_ls, name="whole.h5", **settings)
    with monkeypatch.context() as m:
        _crash_after_first_chunk(m)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, files, tiny_ls, name="resumed.h5", **settings)
    wip = stage.wip_path(tmp_path / "resumed.h5")
    assert sorted(p.name for p in wip.iterdir()) == ["chunk_00000.npz", "settings.json"]
    assert not (tmp_path / "resumed.h5").exists()
    detected = []
    real = stage.detect_chunk
    monkeypatch.setattr(stage, "detect_chunk", lambda *a, **k: detected.append(a[2]) or real(*a, **k))
    resumed = _run(tmp_path, files, tiny_ls, name="resumed.h5", **settings)
    assert detected == [["c.png", "d.jpg"], ["e.jpg"]]  # the first chunk was reused
    assert resumed.equals(whole) and load_detections(tmp_path / "resumed.h5").equals(whole)
    assert (tmp_path / "resumed.h5").read_bytes() == (tmp_path / "whole.h5").read_bytes()  # no timestamp inside
    assert not wip.exists()
    detected.clear()
    again = _run(tmp_path, files, tiny_ls, name="resumed.h5", **settings)  # complete: nothing to do
    assert detected == [] and again.equals(whole)


def test_a_wip_or_file_of_other_settings_is_refused(tmp_path, files, tiny_ls, monkeypatch):
    with monkeypatch.context() as m:
        _crash_after_first_chunk(m)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, files, tiny_ls, chunk_size=2)
    with pytest.raises(stage.DetectStageError, match=r"out\.h5\.wip: made with other settings "
                                                     r"\(differing: score_threshold\).*--overwrite"):
        _run(tmp_path, files, tiny_ls, chunk_size=2, score_threshold=0.3)
    done = _run(tmp_path, files, tiny_ls, chunk_size=2, score_threshold=0.3, overwrite=True)
    assert done.attrs["score_threshold"] == 0.3
    with pytest.raises(stage.DetectStageError, match="exists and was not made by this run's settings"):
        _run(tmp_path, files, tiny_ls, chunk_size=2, max_per_image=3)


# -- weights lookup -----------------------------------------------------------------------------

def test_missing_hub_weights_say_where_to_put_them(tmp_path, files, tiny_ls, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    assert hub_weights_path("fasterrcnn_resnet50_fpn") == expected
    with pytest.raises(DetectorError) as e:
        load_detector("fasterrcnn_resnet50_fpn", None, tiny_ls)
    msg = str(e.value)
    assert str(expected) in msg and "nothing is downloaded" in msg and "--detector-weights" in msg and "\n" not in msg
    # The file where torchvision would keep it: found without --detector-weights
    hub = hub_weights_path(SSD)
    hub.parent.mkdir(parents=True)
    hub.write_bytes(files["ssd"].read_bytes())
    assert load_detector(SSD, None, tiny_ls).weights == hub
    with pytest.raises(DetectorError, match="unknown detector 'yolo'"):
        load_detector("yolo", None, tiny_ls)
    with pytest.raises(DetectorError, match=r"ssd\.pth: not weights of fasterrcnn_mobilenet_v3_large_320_fpn"):
        load_detector("fasterrcnn_mobilenet_v3_large_320_fpn", files["ssd"], tiny_ls)


# -- bad images ------------------------------------------------------------------------------------

def test_corrupt_image_fails_by_name_or_is_skipped(tmp_path, files, tiny_ls, stubbed):
    with pytest.raises(stage.DetectStageError, match=r"broken\.jpg: cannot decode.*--on-error skip"):
        _run(tmp_path, files, tiny_ls, folder="bad", model=SSD)
    dets = _run(tmp_path, files, tiny_ls, name="skip.h5", folder="bad", model=SSD, on_error="skip",
                overwrite=True)
    k = dets.file_names.index("broken.jpg")
    assert dets.attrs["skipped_images"] == ["broken.jpg"]
    assert dets.counts[k] == 0 and dets.sizes[k].tolist() == [-1, -1]
    assert (np.delete(dets.counts, k) == 6).all()  # the others as in the mapping test (NMS 0.5, no cap)


def test_images_list_file_picks_and_orders(tmp_path, files, tiny_ls, stubbed):
    lst = tmp_path / "list.txt"
    lst.write_text("# two of them\nd.jpg\n\na.jpg\n")
    dets = stage.run_detector(tmp_path / "l.h5", images=files["good"], model=SSD, weights=files["ssd"],
                              labelspace=tiny_ls, images_list=lst, options=OPTS)
    assert dets.file_names == ["d.jpg", "a.jpg"]


# -- tiny-fcos training and box AP -------------------------------------------------------------------

def test_train_detector_few_steps_gives_a_loadable_checkpoint(tmp_path, files, tiny_ls):
    samples = [Sample(files["good"] / name, np.array([[4, 4, 30, 30]], np.float32), np.array([k % 3]))
               for k, (name, *_) in enumerate(IMAGES)]
    cfg = TinyFcosConfig(categories=tuple(tiny_ls.objects), min_size=64, max_size=96)
    model, stats = train_detector(samples, cfg, TrainSettings(epochs=1, batch_size=2, max_steps=2, warmup_steps=1,
                                                              threads=1), log=lambda m: None)
    assert stats["steps"] == 2 and set(stats["final_losses_mean_50"]) == {"classification", "bbox_regression",
                                                                          "bbox_ctrness"}
    save_tiny_fcos(model, cfg, tmp_path / "ckpt", {"train": stats})
    det = load_detector("tiny-fcos", tmp_path / "ckpt", tiny_ls)
    assert det.label_to_object.tolist() == [0, 1, 2]  # its categories are the label space's objects
    assert not det.model.training


def _ann(file_names, pairs_per_image) -> Annotations:
    """pairs: (box_h, box_o, object) in coord boxes; hoi/verb 0 (unused by box AP)."""
    per = [{"boxes_h": [p[0] for p in ps], "boxes_o": [p[1] for p in ps], "hoi": [0] * len(ps),
            "verb": [0] * len(ps), "object": [p[2] for p in ps]} for ps in pairs_per_image]
    return Annotations.from_lists(file_names, [(100, 100)] * len(file_names), per, "tiny")


def test_box_ap_hand_made():
    ball, cup, person = 0, 1, 2
    A, B, C = [10, 10, 50, 90], [60, 60, 70, 70], [0, 0, 40, 40]
    # image x: one person in two pairs (one instance), a ball; image y: a person alone with a cup far away
    ann = _ann(["x.jpg", "y.jpg"], [[(A, B, ball), (A, B, ball)], [(C, [80, 80, 90, 90], cup)]])
    boxes, labels = ground_truth_boxes(ann, person)
    assert [len(b) for b in boxes] == [2, 2] and sorted(labels[0].tolist()) == [ball, person]
    dets = Detections(
        ["x.jpg", "y.jpg"], [(100, 100)] * 2, [0, 4, 6],
        [A, [11, 10, 50, 90], [60, 60, 68, 68], [0, 0, 10, 10],   # x: person TP, its duplicate FP, ball IoU .64
         [1, 0, 40, 40], [80, 80, 90, 90]],                       # y: person TP (IoU .975), cup TP
        [0.9, 0.8, 0.5, 0.6, 0.7, 0.2], [person, person, ball, person, person, cup])
    res = box_ap(dets, ann, 3, person)
    # person, by score: TP .9, FP .8 (duplicate), TP .7, FP .6: precision 1, .5, .67, .5 at recall .5, .5, 1, 1
    assert res.ap[person] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert res.ap[ball] == pytest.approx(1.0) and res.ap[cup] == pytest.approx(1.0)
    assert res.num_gt.tolist() == [1, 1, 2] and res.num_dets.tolist() == [1, 1, 4]
    assert res.mean == pytest.approx((5 / 6 + 2) / 3)
    strict = box_ap(dets, ann, 3, person, iou=0.7)  # the ball's IoU .64 no longer matches
    assert strict.ap[ball] == 0.0
    assert np.isnan(average_precision(np.zeros(0, bool), 0)) and average_precision(np.zeros(3, bool), 2) == 0.0


def test_a_second_detections_run_on_the_same_output_is_refused_naming_the_holder(tmp_path, files, tiny_ls, stubbed):
    import os

    from hoicore.lock import LockError, exclusive

    with exclusive((tmp_path / "out.h5").absolute(), what="detections"):  # run A holds it
        with pytest.raises(LockError, match=f"in use by another detections run .*pid {os.getpid()}"):
            _run(tmp_path, files, tiny_ls, model=SSD, overwrite=True)
    assert not (tmp_path / "out.h5").exists()
    assert len(_run(tmp_path, files, tiny_ls, model=SSD)) == len(IMAGES)  # free again
