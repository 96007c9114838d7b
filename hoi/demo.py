"""``make demo``: the whole method on the bundled benchmark, offline, on a CPU, in minutes.

Builds the minibench world (or reuses it), runs the teacher cache over its train and test
splits with the shipped small CLIP, trains the student for each row of the paper's
ablation and for each zero-shot split, evaluates every one on the test split and writes
``OUT/results.json`` (with the seconds each stage took) and a few pictures. Everything
lands under one folder (``runs/demo`` by default).

The validation split is built with the world but never read here: settings are chosen
on it by ``scripts/select_on_val.py``, which shares this module's world and cache steps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from hoicore.files import write_json_atomic

log = logging.getLogger(__name__)

# The demo's teacher: the shipped minibench CLIP; whole images encoded at GLOBAL_SIZE px
# (the input at which it ranks held-out scenes best: minibench/model/training.json), union
# boxes grown to a square with a margin (the crop rule its teacher baseline scores best
# with on the validation split: scripts/select_on_val.py --teacher).
GLOBAL_SIZE = 192
CROP_MODE, UNION_MARGIN = "pad", 0.1
# A few minutes on two cores: short training, and the paper's rows (hoi ablate has more).
# Each student trains on one thread, two at a time where there are two cores: torch's
# threaded kernels sum in an order that depends on the thread count, so one thread each
# gives the same numbers on any machine (and two one-thread students outpace one on two).
# 32 images a step: the feature loss fits CLIP's embeddings in more, smaller steps (chosen on
# the validation split; scripts/select_on_val.py).
DEMO_TRAINING = {"epochs": 5, "batch_size": 32, "threads": 1}
DEMO_JOBS = 2
DEMO_ROWS = ("global-level", "union-level", "all-late", "all-early")


STAGES = ("teacher-cache", "train", "eval", "all")


def demo_paths(out) -> dict[str, Path]:
    out = Path(out)
    return {"world": out / "world", "train_cache": out / "cache" / "train.zarr",
            "val_cache": out / "cache" / "val.zarr", "test_cache": out / "cache" / "test.zarr",
            "train": out / "train", "eval": out / "eval", "ablation": out / "ablation",
            "detected": out / "detected", "results": out / "results.json", "figures": out / "figures",
            "ap_figure": out / "ap_per_class.png"}


class _Stages:
    """Seconds spent in each stage, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.seconds[name] = round(time.perf_counter() - t0, 1)


def _write_results(p: dict, results: dict, stages: _Stages, *, complete: bool) -> None:
    """``results.json`` saying which stages it covers (those finished, with their seconds) and
    whether it is the whole run's: a file written before the last stage never looks final."""
    results["stage_seconds"] = dict(stages.seconds)
    results["complete"] = complete
    write_json_atomic(p["results"], results)


def run_demo(out="runs/demo", *, until: str = "all", epochs: int | None = None, train_images: int = 2000,
             val_images: int = 600, test_images: int = 600, seed: int = 0, train_seed: int = 0, figures: int = 4,
             echo=print) -> dict | None:
    """Run the demo into ``out`` up to stage ``until`` (teacher-cache, train, eval, all).

    ``all`` runs the ablation grid and the zero-shot rows and returns the results written
    to ``out/results.json``; ``train`` and ``eval`` train and evaluate the default student
    alone (``make train``, ``make eval`` on the bundled benchmark). ``seed`` is the world's:
    scenes, splits and detections; ``train_seed`` the students' (weights and data order)."""
    from trainer.config import TrainConfig

    stages = _Stages()
    p = demo_paths(out)
    w, ls = stages.run("world", world_step, p, train_images, val_images, test_images, seed, echo)
    stages.run("teacher_cache", cache_step, p, w, ls, ("train", "test"), echo)
    config = TrainConfig(progress=False, seed=train_seed,
                         **{**DEMO_TRAINING, **({"epochs": epochs} if epochs is not None else {})})
    if until == "teacher-cache":
        return None
    if until in ("train", "eval"):
        return _default_student(p, config, evaluate=until == "eval", echo=echo)
    results = stages.run("students", _ablation, p, config, echo)
    _write_results(p, results, stages, complete=False)  # what is measured survives a later stage's crash
    results["asked_in_words"] = stages.run("asked_in_words", _asked_in_words, p, results, echo)
    detected = stages.run("detected", _detected_row, p, w, ls, echo)
    if detected is not None:
        after = next(k for k, r in enumerate(results["rows"]) if r["name"] == "all-late") + 1
        results["rows"].insert(after, detected)
    stages.run("figures", _figures, p, w, ls, figures, echo)
    _write_results(p, results, stages, complete=True)
    echo("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in stages.seconds.items()))
    return results


def world_step(p: dict, train_images: int, val_images: int, test_images: int, seed: int, echo):
    """Build (or reuse) the world in ``p['world']``; returns (layout paths, label space)."""
    from hoidata.labelspace import LabelSpace
    from minibench import build as world

    echo(f"[1/5] minibench world -> {p['world']}")
    world.build(p["world"], seed=seed, n_train=train_images, n_val=val_images, n_test=test_images, web=False,
                log=lambda m: echo(f"      {m}"))
    w = world.layout(p["world"])
    return w, LabelSpace.load(w["labelspace"])


def demo_teacher():
    """The teacher options of the demo (and of the validation runs)."""
    from minibench.clip import MODEL_DIR
    from pipeline.teacher.options import TeacherOptions

    return TeacherOptions(model=f"local-dir:{MODEL_DIR}", global_size=GLOBAL_SIZE, crop_mode=CROP_MODE,
                          union_margin=UNION_MARGIN)


def cache_step(p: dict, w: dict, ls, splits, echo) -> None:
    """Teacher caches of ``splits``, each with its ground truth: the test split's for the
    evaluation, the train split's for the supervised references alone (no annotation-free
    student reads it; its CLIP arrays are the same with or without it)."""
    from cache.store import CacheMismatch
    from pipeline.teacher.options import RunOptions
    from pipeline.teacher.resources import ShardResources
    from pipeline.teacher.run import build_teacher_cache

    echo(f"[2/5] teacher cache of {', '.join(splits)} (the minibench CLIP; whole images at {GLOBAL_SIZE} px, "
         "union boxes at its input size)")
    with ShardResources() as resources:  # one teacher loaded for every split
        for split in splits:
            def build(overwrite: bool, split=split):
                return build_teacher_cache(
                    p[f"{split}_cache"], images=w[f"images_{split}"], detections=w[f"detections_{split}"],
                    annotations=w[f"instances_{split}"], labelspace=ls, teacher=demo_teacher(), split=split,
                    run=RunOptions(images_per_shard=512, workers=2, overwrite=overwrite), resources=resources)
            try:
                build(overwrite=False)
            except CacheMismatch as e:  # the demo's own output, made by another version or setting: rebuilt
                echo(f"      made with other settings, so rebuilt ({e})")
                build(overwrite=True)


def _default_student(p: dict, config, evaluate: bool, echo) -> dict | None:
    from hoidata.evaluation import format_table
    from trainer.engine import train_or_reuse
    from trainer.predict import run_eval

    echo(f"[3/5] student (default configuration) -> {p['train']}")
    ckpt = train_or_reuse(p["train_cache"], p["train"], config)
    if not evaluate:
        return None
    res, report = run_eval(p["test_cache"], checkpoint=ckpt, results=p["eval"] / "results.json",
                           predictions=p["eval"] / "predictions.json.gz")
    echo(format_table(res))
    echo(f"\nresults: {p['eval'] / 'results.json'}")
    return report


def _ablation(p: dict, config, echo) -> dict:
    """The demo's rows of the ablation grid and its zero-shot rows, with their provenance."""
    from cache.store import open_cache
    from hoicore import __version__
    from hoidata.labelspace import LabelSpace
    from minibench.build import layout
    from trainer.ablate import (
        FULLY_UNSEEN_PREFIX,
        GRID,
        LABELLED_ROWS,
        UNSEEN_PREFIX,
        ablate,
        format_ablation,
        format_zero_shot,
        unseen_rows,
        zero_shot_table,
    )

    splits = tuple(LabelSpace.load(layout(p["world"])["labelspace"]).zero_shot_splits)
    echo(f"[3/5] students: one per ablation row, two supervised references and, annotation-free and fully "
         f"supervised, one per zero-shot split ({', '.join(splits)}), each evaluated on the test split")
    rows = ablate(p["train_cache"], p["test_cache"], p["ablation"], config,
                  rows=tuple(r for r in GRID if r.name in DEMO_ROWS) + LABELLED_ROWS + unseen_rows(splits)
                  + unseen_rows(splits, LABELLED_ROWS[1], FULLY_UNSEEN_PREFIX),
                  jobs=max(1, min(DEMO_JOBS, len(os.sched_getaffinity(0)))))
    main = [r for r in rows if not r["name"].startswith((UNSEEN_PREFIX, FULLY_UNSEEN_PREFIX))]
    unseen = zero_shot_table(rows)
    teacher = open_cache(p["test_cache"]).teacher.to_attrs()
    world_config = json.loads(layout(p["world"])["manifest"].read_text())["config"]
    results = {"package_version": __version__, "world": str(p["world"]),
               "world_config": {k: v for k, v in world_config.items() if k != "prompts"},
               "teacher": {k: teacher[k] for k in ("model", "weights_sha256", "global_size", "input_size",
                                                    "crop_mode")},
               "train_config": config.to_dict(),
               "rows": [{"name": r["name"], "label": r["label"], "supervision": r.get("supervision", "none"),
                         "default": r["summary"]["default"], "known_object": r["summary"]["known_object"],
                         **({"zero_shot": r["summary"]["zero_shot"]} if "zero_shot" in r["summary"] else {})}
                        for r in main],
               "unseen": unseen}
    free = [r for r in main if r.get("supervision", "clip") == "clip"]
    echo("")
    echo(format_ablation(free))
    echo("\nthe same student trained on HOI labels (not zero-shot: the references it is measured against)")
    echo(format_ablation([r for r in main if r not in free]))
    echo("")
    echo(format_zero_shot(unseen))
    echo(f"\nresults: {p['results']}")
    return results


def _asked_in_words(p: dict, results: dict, echo, split: str = "unseen_verb") -> dict | None:
    """The student trained without ``split``'s classes asked for them in words (``hoi eval
    --hoi ...``: prompts through the teacher's text tower), scored on the test split: the
    zero-shot table's figure for that split, reached from the words alone."""
    from cache.store import open_cache
    from hoi.queries import ClassQuery, cache_classes
    from trainer.ablate import UNSEEN_PREFIX
    from trainer.cache_info import labelspace_of
    from trainer.predict import run_eval

    row = next((t for t in results["unseen"] if t["split"] == split), None)
    if row is None:
        return None
    ls = labelspace_of(open_cache(p["test_cache"]))
    words = [ls.class_name(c).replace("_", " ") for c in ls.zero_shot_splits[split]["unseen"]]
    checkpoint = p["ablation"] / f"{UNSEEN_PREFIX}{split}" / "checkpoint"
    command = (f"hoi eval --cache {p['test_cache']} --checkpoint {checkpoint} "
               + " ".join(f"--hoi '{w}'" for w in words) + " --add-classes")
    echo(f"\nthe student trained without {split}'s classes, asked for them in words: {command}")
    classes = cache_classes(p["test_cache"], ClassQuery(tuple(words), add_classes=True))
    res, _ = run_eval(p["test_cache"], checkpoint=checkpoint, classes=classes,
                      results=p["ablation"] / f"{UNSEEN_PREFIX}{split}" / "asked_in_words.json")
    got = res.summary()["scored_classes"]["default"]
    echo(f"      the {len(words)} classes asked for: Default {100 * got:.2f} (the zero-shot table's "
         f"{row['setting']} unseen: {100 * row['trained_without']['unseen']:.2f})")
    return {"split": split, "command": command, "classes": words, "default": got,
            "table": row["trained_without"]["unseen"]}


def _detected_row(p: dict, w: dict, ls, echo) -> dict | None:
    """The all-late student on the shipped detector's boxes, the whole path from pixels
    (``hoi detect``), evaluated on the test split; None when no detector is shipped."""
    from hoi.detect import default_detector, run_detect
    from hoidata.evaluation import evaluate_file
    from pipeline.detection.options import DetectOptions

    if default_detector(ls) is None:
        echo("[4/5] no detector is shipped for this label space: no all-late-detected row")
        return None
    checkpoint = p["ablation"] / "all-late" / "checkpoint"
    out = p["detected"] / "predictions.json.gz"
    command = f"hoi detect --images {w['images_test']} --checkpoint {checkpoint} -o {out}"
    echo(f"[4/5] the all-late student from pixels, on the shipped detector's boxes: {command}")
    info = run_detect(w["images_test"], checkpoint, out, options=DetectOptions(progress=False))
    summary = evaluate_file(w["instances_test"], out, labelspace=ls).summary()  # as eval-predictions does
    echo(f"      then: hoi eval-predictions --annotations {w['instances_test']} --labelspace {w['labelspace']} "
         f"--predictions {out}  (Full {100 * summary['default']['full']:.2f})")
    return {"name": "all-late-detected", "label": "all levels, late fusion, on the shipped detector's boxes",
            "supervision": "clip", "default": summary["default"], "known_object": summary["known_object"],
            "zero_shot": summary.get("zero_shot"), "command": command,
            "detector": {k: info["detector"][k] for k in ("name", "weights_sha256", "score_threshold", "nms_iou",
                                                           "max_per_image")},
            "images_per_s": info["images_per_s"]}


def _figures(p: dict, w: dict, ls, count: int, echo) -> None:
    """Pictures of the all-late student's top detections on the first test images with pairs,
    and its per-class AP (the table's all-late row, class by class)."""
    from hoidata.drawing import Drawing
    from hoidata.predictions import read_predictions
    from hoidata.visualize import draw_images, plot_result
    from trainer.predict import run_eval

    echo(f"[5/5] the all-late student's top detections -> {p['figures']}, its per-class AP -> {p['ap_figure']}")
    saved = p["ablation"] / "all-late" / "predictions.json.gz"
    res, _ = run_eval(p["test_cache"], checkpoint=p["ablation"] / "all-late" / "checkpoint", predictions=saved)
    pred = read_predictions(saved)
    for old in p["figures"].glob("*.png"):
        old.unlink()
    plot_result(res, p["ap_figure"], title="Per-class AP: all levels, late fusion (minibench test)")
    draw_images(pred, ls, lambda name: w["images_test"] / name, p["figures"], Drawing(count=count))
