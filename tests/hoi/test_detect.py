"""``hoi detect``: detector -> CLIP's global pass -> student, against the cache path on the
same detections (``hoi detections run`` + ``teacher-cache --levels global`` + ``predict``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tinyworld import MODEL, make_checkpoint, make_world

from hoi.cli import main as hoi_main
from hoi.detect import run_detect
from hoi.queries import ClassQuery
from hoidata.labelspace import LabelSpace
from hoidata.pairs import PairRule
from hoidata.predictions import read_predictions, read_provenance
from pipeline.detection.options import DetectOptions
from pipeline.detection.stage import run_detector
from pipeline.teacher.options import RunOptions, TeacherOptions
from pipeline.teacher.run import build_teacher_cache
from pipeline.tiny_fcos.model import TinyFcosConfig, build_tiny_fcos, save_tiny_fcos
from trainer.config import TrainConfig
from trainer.engine import train
from trainer.predict import predict

BATCH = 4  # the same batches on both paths: a detector pads a batch's images to one size
OPTS = DetectOptions(score_threshold=0.0, max_per_image=16, batch_size=BATCH, workers=0, progress=False)
RULE = PairRule(human_score=0.0, object_score=0.0, max_humans=2, max_objects=3)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of images, a random tiny-fcos over them, caches of both levels from its
    detections and a student trained on the full one."""
    root = tmp_path_factory.mktemp("detect")
    world = make_world(root, num_images=9)
    ls = LabelSpace.load(world["labelspace"])
    torch.manual_seed(0)
    # (this random model scores its first two labels highest: people and balls, so pairs exist)
    cfg = TinyFcosConfig(categories=("person", "ball", "cup"), min_size=64, max_size=128, score_thresh=0.0,
                         detections_per_img=16)
    save_tiny_fcos(build_tiny_fcos(cfg).eval(), cfg, root / "detector")
    run_detector(root / "detected.h5", images=world["images"], model="tiny-fcos", weights=root / "detector",
                 labelspace=ls, options=OPTS)
    teacher = TeacherOptions(model=MODEL, pretrained=str(make_checkpoint(root / "clip")))
    run = dict(images_per_shard=BATCH, batch_size=BATCH, workers=0, jobs=1, progress=False)
    caches = {levels: build_teacher_cache(root / f"{levels}.zarr", images=world["images"],
                                          detections=root / "detected.h5", labelspace=ls, teacher=teacher,
                                          pair_rule=RULE, run=RunOptions(levels=levels, **run))
              for levels in ("all", "global")}
    out = train(caches["all"], root / "student", TrainConfig(epochs=1, batch_size=4, hidden_dim=16, progress=False,
                                                             threads=1, device="cpu"))
    return {"root": root, "world": world, "caches": caches, "checkpoint": out["checkpoint"],
            "detector": root / "detector"}


def test_detect_equals_the_cache_path_on_the_same_detections(setup, tmp_path):
    cached, _ = predict(setup["caches"]["global"], checkpoint=setup["checkpoint"])
    info = run_detect(setup["world"]["images"], setup["checkpoint"], tmp_path / "preds.json", detector="tiny-fcos",
                      detector_weights=setup["detector"], options=OPTS)
    direct = read_predictions(tmp_path / "preds.json")
    assert len(cached) > 20 and direct.file_names == cached.file_names
    for key in ("image", "hoi"):
        assert np.array_equal(getattr(direct, key), getattr(cached, key)), key
    for key in ("boxes_h", "boxes_o"):
        assert np.allclose(getattr(direct, key), getattr(cached, key), atol=1e-4), key  # JSON round trip
    assert np.allclose(direct.score, cached.score, rtol=1e-5, atol=1e-7)
    assert info["num_images"] == 9 and info["pair_rule"] == RULE.as_dict()
    assert info["teacher"]["levels"] == ["global"] and info["detector"]["name"] == "tiny-fcos"


def test_cli_detect_draws_records_provenance_and_skips_bad_images(setup, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(setup["world"]["images"], images)
    (images / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    args = ["detect", "--images", str(images), "--checkpoint", setup["checkpoint"], "-o", str(tmp_path / "p.npz"),
            "--detector", "tiny-fcos", "--detector-weights", str(setup["detector"]), "--score-threshold", "0",
            "--batch-size", "4", "--workers", "0", "--no-progress", "--draw", str(tmp_path / "pictures"),
            "--draw-count", "3"]
    r = CliRunner().invoke(hoi_main, args)
    assert r.exit_code == 1 and "zz_broken.jpg" in r.output and "--on-error skip" in r.output
    r = CliRunner().invoke(hoi_main, args + ["--on-error", "skip"])
    assert r.exit_code == 0, r.output
    assert "images/s" in r.output and len(list((tmp_path / "pictures").glob("*.png"))) == 3
    prov = read_provenance(tmp_path / "p.npz")
    assert prov["skipped_images"] == ["zz_broken.jpg"] and prov["num_images"] == 10
    assert set(prov["images_per_s"]) == {"total", "detector", "clip", "student"}
    assert prov["student"]["config"] == json.loads((setup["root"] / "student" / "checkpoint" / "checkpoint.json")
                                                   .read_text())["config"]
    assert len(read_predictions(tmp_path / "p.npz")) > 0
    # the summary counts the images scored, the skipped one apart
    assert "predictions for 9 images" in r.output and "(1 skipped: unreadable" in r.output
    # an existing output is not replaced without --overwrite
    again = CliRunner().invoke(hoi_main, args + ["--on-error", "skip"])
    assert again.exit_code == 2 and "p.npz exists; pass --overwrite" in again.output
    assert CliRunner().invoke(hoi_main, args + ["--on-error", "skip", "--overwrite"]).exit_code == 0
    # the file records its label space: readers need not be told it, and refuse another
    ev = ["eval-predictions", "--annotations", str(setup["world"]["annotations"]), "--predictions",
          str(tmp_path / "p.npz"), "--json"]
    r = CliRunner().invoke(hoi_main, ev)
    assert r.exit_code == 0 and "\"full\"" in r.output, r.output
    r = CliRunner().invoke(hoi_main, ev + ["--labelspace", "hico_det"])
    assert r.exit_code == 1 and "made over label space 'tiny'" in r.output and "not over 'hico_det'" in r.output


def test_detect_needs_a_detector_for_a_label_space_without_one(setup, tmp_path):
    with pytest.raises(ValueError, match="no detector is shipped for label space 'tiny'.*--detector"):
        run_detect(setup["world"]["images"], setup["checkpoint"], tmp_path / "p.json", options=OPTS)


def test_bench_paper_scale_times_both_paths_on_the_same_encoder_and_pairs(tmp_path):
    """The paper-scale cost line: each path is the global pass plus its own part, measured
    (not extrapolated), per image, and the ratio printed is the one returned."""
    from tinyworld import register_model

    from bench.detect import bench_paper_scale

    register_model(tmp_path)
    lines = []
    ms = bench_paper_scale(num_images=2, pairs=6, model=MODEL, grid_px=32, device="cpu", echo=lines.append)
    assert all(ms[k] > 0 for k in ("global", "crops", "student"))
    assert ms["teacher_path"] == pytest.approx(ms["global"] + ms["crops"])
    assert ms["student_path"] == pytest.approx(ms["global"] + ms["student"])
    assert "6 pairs an image" in lines[0] and "2 images" in lines[0]
    assert f"{ms['teacher_path'] / ms['student_path']:.1f}x cheaper" in lines[1]


def test_classes_asked_for_in_words_score_as_the_cache_s_own_text_does(setup, tmp_path):
    """The same prompts through the teacher's text tower give the cache's text embeddings and
    the same scores; a subset is scored alone, recorded in the file and evaluated by name."""
    from cache.store import open_cache
    from hoi.queries import cache_classes
    from hoidata.classes import ClassQueryError

    cache, checkpoint = setup["caches"]["all"], setup["checkpoint"]
    ls, text = cache_classes(cache, ClassQuery(classes_file=setup["world"]["labelspace"]))
    assert ls.prompts == LabelSpace.load(setup["world"]["labelspace"]).prompts
    assert np.allclose(text, open_cache(cache).read("text/embedding"), atol=1e-6)
    plain, _ = predict(cache, checkpoint=checkpoint)
    asked, info = predict(cache, checkpoint=checkpoint, classes=(ls, text))
    assert np.array_equal(asked.hoi, plain.hoi) and np.allclose(asked.score, plain.score, rtol=1e-5, atol=1e-7)
    assert info["classes"]["prompts"] == list(ls.prompts)

    run_detect(setup["world"]["images"], checkpoint, tmp_path / "kick.json", detector="tiny-fcos",
               detector_weights=setup["detector"], options=OPTS, classes=ClassQuery(("kick ball",)))
    kick = read_predictions(tmp_path / "kick.json")
    assert kick.classes["hoi"] == [["kick", "ball"]] and len(kick) and set(kick.hoi.tolist()) == {0}
    with pytest.raises(ClassQueryError, match="unknown object 'unicorn'"):
        run_detect(setup["world"]["images"], checkpoint, tmp_path / "x.json", detector="tiny-fcos",
                   detector_weights=setup["detector"], options=OPTS, classes=ClassQuery(("ride unicorn",)))
    evaluate = ["eval-predictions", "--annotations", str(setup["world"]["annotations"]), "--labelspace",
                str(setup["world"]["labelspace"]), "--predictions"]
    r = CliRunner().invoke(hoi_main, evaluate + [str(tmp_path / "kick.json")])
    assert r.exit_code == 0, r.output
    assert "classes asked for (1): Default" in r.output
    run_detect(setup["world"]["images"], checkpoint, tmp_path / "new.json", detector="tiny-fcos",
               detector_weights=setup["detector"], options=OPTS, classes=ClassQuery(("kick cup",)))
    r = CliRunner().invoke(hoi_main, evaluate + [str(tmp_path / "new.json")])
    assert r.exit_code == 1 and "does not have: kick cup" in r.output
    r = CliRunner().invoke(hoi_main, ["predict", "--cache", str(cache), "--scorer", "teacher", "--hoi", "kick ball",
                                      "-o", str(tmp_path / "t.json")])
    assert r.exit_code == 1 and "scored by a student" in r.output


def test_detect_where_no_image_can_be_read_writes_nothing_and_says_so(setup, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png"):
        (images / name).write_bytes(b"not an image")
    opts = DetectOptions(**{**OPTS.__dict__, "on_error": "skip"})
    with pytest.raises(Exception, match="none of the 2 images under .* could be read .*nothing was written"):
        run_detect(images, setup["checkpoint"], tmp_path / "p.json", detector="tiny-fcos",
                   detector_weights=setup["detector"], options=opts)
    assert not (tmp_path / "p.json").exists()


def test_only_the_image_formats_the_project_reads_are_opened(tmp_path):
    from PIL import Image

    from pipeline.images import read_sized

    Image.new("RGB", (8, 6), (10, 20, 30)).save(tmp_path / "real.jpg")
    assert read_sized(tmp_path / "real.jpg", None).pixels.shape == (6, 8, 3)
    Image.new("RGB", (8, 6)).save(tmp_path / "disguised.jpg", format="PPM")  # a format PIL knows, not ours
    assert "cannot decode" in read_sized(tmp_path / "disguised.jpg", None)


def test_a_moved_teacher_is_named_and_found_again_by_sha256(setup, tmp_path):
    """A checkpoint whose CLIP weights have moved: one line naming the missing file and the
    option; --teacher-weights with the same weights elsewhere works; other weights are refused."""
    import shutil

    from tinyworld import make_checkpoint

    moved = tmp_path / "clip" / "weights.pt"
    moved.parent.mkdir()
    shutil.copy(setup["root"] / "clip" / f"{MODEL}.pt", moved)
    ls = LabelSpace.load(setup["world"]["labelspace"])
    cache = build_teacher_cache(tmp_path / "c.zarr", images=setup["world"]["images"],
                                detections=setup["root"] / "detected.h5", labelspace=ls,
                                teacher=TeacherOptions(model=MODEL, pretrained=str(moved)), pair_rule=RULE,
                                run=RunOptions(levels="global", images_per_shard=BATCH, batch_size=BATCH, workers=0,
                                               jobs=1, progress=False))
    student = train(cache, tmp_path / "s", TrainConfig(epochs=1, batch_size=4, hidden_dim=16, progress=False,
                                                       threads=1, device="cpu", union_branch=False, w_union=0.0))
    moved.unlink()
    args = ["detect", "--images", str(setup["world"]["images"]), "--checkpoint", student["checkpoint"],
            "--detector", "tiny-fcos", "--detector-weights", str(setup["detector"]), "--workers", "0",
            "--no-progress", "--score-threshold", "0"]
    r = CliRunner().invoke(hoi_main, args + ["-o", str(tmp_path / "a.json")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert f"the weights file {moved} does not exist" in r.output and "--teacher-weights" in r.output
    here = str(setup["root"] / "clip" / f"{MODEL}.pt")
    r = CliRunner().invoke(hoi_main, args + ["-o", str(tmp_path / "b.json"), "--teacher-weights", here])
    assert r.exit_code == 0, r.output
    other = make_checkpoint(tmp_path / "other", seed=1)
    r = CliRunner().invoke(hoi_main, args + ["-o", str(tmp_path / "c.json"), "--teacher-weights", str(other)])
    assert r.exit_code == 1 and "sha256 differs" in r.output, r.output


def test_a_large_photo_is_reduced_as_decoded_and_its_boxes_stay_in_its_own_pixels(setup, tmp_path, monkeypatch):
    """A photo 8x larger than the detector's input is decoded at the detector's input size
    (JPEG DCT scaling, never the full raster), and every box comes back in the photo's pixels."""
    from PIL import Image

    from pipeline.detection import stage as detect_stage
    from pipeline.images import decode_sized

    big = tmp_path / "photos" / "big.jpg"
    big.parent.mkdir()
    small = np.asarray(Image.open(next(iter(sorted(setup["world"]["images"].glob("*.jpg"))))).convert("RGB"))
    Image.fromarray(small).resize((small.shape[1] * 8, small.shape[0] * 8), Image.Resampling.NEAREST).save(big)
    W, H = Image.open(big).size
    got = decode_sized(big, 128)
    assert got.size == (W, H) and max(got.pixels.shape[:2]) == 128 and got.scale == pytest.approx([W / 128] * 4,
                                                                                                   rel=0.02)
    seen = []
    infer = detect_stage._infer
    monkeypatch.setattr(detect_stage, "_infer", lambda m, arrays, *a: seen.extend(x.shape for x in arrays)
                        or infer(m, arrays, *a))
    info = run_detect(big.parent, setup["checkpoint"], tmp_path / "p.json", detector="tiny-fcos",
                      detector_weights=setup["detector"], options=OPTS)
    assert info["decoded_max_side"] == 128 and max(seen[0][:2]) == 128  # the detector read the reduced image
    pred = read_predictions(tmp_path / "p.json")
    assert len(pred) > 0
    for boxes in (pred.boxes_h, pred.boxes_o):
        assert boxes[:, [2, 3]].max() > 128 and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
