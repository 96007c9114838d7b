"""Build the minibench world into a folder, deterministically from a seed.

    python -m minibench.build --out runs/minibench [--seed 0] [--train 2000] [--val 600] [--test 600]

Layout (see :func:`layout`)::

    OUT/manifest.json              what was built, from which settings, how long each step took
    OUT/labelspace.json            hoi-labelspace/1 (train_counts counted on the train split)
    OUT/images/{train,val,test}/   minibench_{split}_NNNNNN.jpg, 224 x 224
    OUT/instances_{train,val,test}.json   ground truth, HICO-DET's instances_*.json format
    OUT/detections_{train,val,test}.h5    simulated detector, hoi-detections/1

The validation split is drawn like the train split (long-tailed) from a seed stream of its
own; its labels serve only to choose settings, never to train, and the test split's never
to choose anything.
    OUT/web/corpus.npz             captioned web corpus (CLIP training only)

A rerun reuses every step the manifest records as done with the same settings; a folder
built with other settings is refused rather than mixed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

from hoicore.errors import HoiError
from hoicore.files import write_json_atomic
from hoidata.annotations import Annotations, read_hicodet_json, write_hicodet_json
from hoidata.detections import save_detections
from hoidata.labelspace import LabelSpace

from . import detector, labels, world
from .corpus import SPLIT_SEED, WEB_SCENES, render_corpus, save_corpus

SCHEMA = "minibench-world/1"
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 92
TEST_MIN_PER_CLASS = 4  # the first C * 4 test images each start with a given class: all classes appear
_CHUNK = 100


class BuildError(HoiError, ValueError):
    """A folder that holds a world built with other settings."""


def layout(root: str | Path) -> dict[str, Path]:
    """Paths of a built world: manifest, labelspace, web, and per split images_/instances_/detections_."""
    root = Path(root)
    paths = {"manifest": root / "manifest.json", "labelspace": root / "labelspace.json",
             "web": root / "web" / "corpus.npz"}
    for split in SPLITS:
        paths[f"images_{split}"] = root / "images" / split
        paths[f"instances_{split}"] = root / f"instances_{split}.json"
        paths[f"detections_{split}"] = root / f"detections_{split}.h5"
    return paths


def file_name(split: str, i: int) -> str:
    return f"minibench_{split}_{i:06d}.jpg"


def _render_images(args) -> list[dict]:
    """Render images start..stop of a split, write them, return their ground-truth pairs."""
    seed, split, start, stop, image_dir, min_per_class = args
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, SPLIT_SEED[split], i])
        first = i % labels.NUM_CLASSES if i < min_per_class * labels.NUM_CLASSES else None
        im, pairs = world.render(world.sample_scene(rng, world.LONG_TAIL, first_class=first))
        im.save(Path(image_dir) / file_name(split, i), quality=JPEG_QUALITY)
        out.append({"boxes_h": np.array([p["box_h"] for p in pairs]).reshape(-1, 4),
                    "boxes_o": np.array([p["box_o"] for p in pairs]).reshape(-1, 4),
                    "hoi": [p["hoi"] for p in pairs], "verb": [p["verb"] for p in pairs],
                    "object": [p["object"] for p in pairs]})
    return out


def render_split(split: str, n: int, seed: int, image_dir: str | Path, workers: int = 2,
                 min_per_class: int = 0) -> Annotations:
    """Render ``n`` images of ``split`` into ``image_dir``; returns their ground truth.

    ``min_per_class``: the first ``min_per_class * C`` images each contain class i % C,
    so every class has at least that many pairs in the split.
    """
    Path(image_dir).mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, s, min(s + _CHUNK, n), str(image_dir), min_per_class) for s in range(0, n, _CHUNK)]
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            per_image = [p for part in pool.map(_render_images, jobs) for p in part]
    else:
        per_image = [p for j in jobs for p in _render_images(j)]
    size = world.SCENE_SIZE
    return Annotations.from_lists([file_name(split, i) for i in range(n)], [(size, size)] * n, per_image,
                                  labels.NAME)


def build(out: str | Path, seed: int = 0, n_train: int = 2000, n_test: int = 600, web_scenes: int = WEB_SCENES,
          workers: int = 2, web: bool = True, n_val: int = 600, log=print) -> dict:
    """Build (or finish building) the world in ``out``; returns the manifest.

    ``web=False`` skips the web corpus (~500 MB, only CLIP training reads it); a later
    build with ``web=True`` adds it to the same world."""
    paths = layout(out)
    config = {"seed": seed, "train": n_train, "val": n_val, "test": n_test, "web_scenes": web_scenes,
              "scene_size": world.SCENE_SIZE, "prompts": list(labels.PROMPTS), "detector": detector.VERSION}
    manifest = {"schema": SCHEMA, "config": config, "done": {}}
    if paths["manifest"].is_file():
        old = json.loads(paths["manifest"].read_text())
        diff = [k for k in config if old.get("config", {}).get(k) != config[k]]
        if diff:
            raise BuildError(f"{out} was built with other settings (differing: {', '.join(diff)}); "
                             f"use another --out or delete it")
        manifest = old
    Path(out).mkdir(parents=True, exist_ok=True)

    def step(name: str, outputs: list[Path], fn) -> None:
        if name in manifest["done"] and all(p.exists() for p in outputs):
            log(f"{name}: reusing ({manifest['done'][name]['seconds']} s when built)")
            return
        t0 = time.time()
        fn()
        manifest["done"][name] = {"seconds": round(time.time() - t0, 1)}
        # Written after the step's outputs: a crash in between redoes the step.
        write_json_atomic(paths["manifest"], manifest)
        log(f"{name}: {manifest['done'][name]['seconds']} s")

    def split(name: str, n: int, min_per_class: int = 0):
        def run():
            ann = render_split(name, n, seed, paths[f"images_{name}"], workers, min_per_class)
            if name == "train":  # the only use of train HOI labels: counting Rare classes
                ls = labels.labelspace(np.bincount(ann.hoi, minlength=labels.NUM_CLASSES))
                ls.save(paths["labelspace"])
            write_hicodet_json(ann, LabelSpace.load(paths["labelspace"]), paths[f"instances_{name}"])
        return run

    def dets(name: str):
        def run():
            ls = LabelSpace.load(paths["labelspace"])
            ann = read_hicodet_json(paths[f"instances_{name}"], ls)
            src = paths[f"instances_{name}"].name
            save_detections(detector.simulate(ann, ls, seed=[seed, SPLIT_SEED[name]], source=src),
                            paths[f"detections_{name}"])
        return run

    step("train", [paths["instances_train"], paths["labelspace"]], split("train", n_train))
    if n_val:
        step("val", [paths["instances_val"]], split("val", n_val, TEST_MIN_PER_CLASS))
    step("test", [paths["instances_test"]], split("test", n_test, TEST_MIN_PER_CLASS))
    for name in SPLITS:
        if name != "val" or n_val:
            step(f"detections_{name}", [paths[f"detections_{name}"]], dets(name))
    if web:
        step("web", [paths["web"]], lambda: save_corpus(render_corpus(web_scenes, seed, workers=workers),
                                                        paths["web"], seed))
    return manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m minibench.build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=2000, help="train images")
    ap.add_argument("--val", type=int, default=600, help="validation images (labels used to choose settings only)")
    ap.add_argument("--test", type=int, default=600, help="test images")
    ap.add_argument("--web-scenes", type=int, default=WEB_SCENES, help="scenes rendered for the web corpus")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-web", action="store_true", help="skip the web corpus (only CLIP training needs it)")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        build(args.out, args.seed, args.train, args.test, args.web_scenes, args.workers, web=not args.no_web,
              n_val=args.val, log=lambda m: print(m, flush=True))
    except BuildError as e:
        raise SystemExit(str(e)) from None
    ls = LabelSpace.load(layout(args.out)["labelspace"])
    print(f"built {args.out} in {time.time() - t0:.0f} s: {ls.num_classes} classes "
          f"({int(ls.rare.sum())} rare, < {ls.rare_threshold} train pairs)", flush=True)


if __name__ == "__main__":
    main()
