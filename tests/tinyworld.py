"""A tiny dataset on disk for pipeline tests: images, detections, ground truth, and a tiny
CLIP checkpoint made here (registered open_clip config, fixed seed; nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import TINY, make_gt
from PIL import Image, ImageDraw, ImageFilter

from hoidata.annotations import write_hicodet_json
from hoidata.detections import Detections, save_detections
from hoidata.labelspace import LabelSpace

MODEL = "hoi-test-vit"
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def register_model(folder: Path) -> Path:
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / f"{MODEL}.json"
    cfg.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(cfg)
    return cfg


def make_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny CLIP, saved once so every process loads the same weights."""
    import open_clip
    import torch

    register_model(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL)
    path = folder / f"{MODEL}.pt"
    torch.save(model.state_dict(), path)
    return path


def make_world_with_model(root: Path, num_images: int) -> dict:
    """:func:`make_world`'s paths, plus ``checkpoint``: the tiny CLIP saved under ``root/model``."""
    paths = make_world(root, num_images=num_images)
    paths["checkpoint"] = make_checkpoint(root / "model")
    return paths


def _image(rng, w, h) -> Image.Image:
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.integers(0, w), rng.integers(0, h)
        r = rng.integers(5, max(6, min(w, h) // 3))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return im.filter(ImageFilter.GaussianBlur(2))  # smooth, as photos are at crop scale


def make_world(root: Path, num_images: int = 10, seed: int = 0, size=(96, 72)) -> dict:
    """Write images (RGB, grayscale, CMYK and RGBA among them), detections and ground truth.

    Returns paths: images, detections, annotations, labelspace.
    """
    rng = np.random.default_rng(seed)
    ls = LabelSpace.from_dict(TINY)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    names, sizes, per_dets, gt = [], [], [], {}
    for i in range(num_images):
        w, h = size[0] + 8 * (i % 3), size[1] + 4 * (i % 2)
        name = f"img_{i:03d}.png" if i % 4 == 3 else f"img_{i:03d}.jpg"
        im = _image(rng, w, h)
        if name.endswith(".png"):
            im = im.convert("RGBA")
        elif i % 5 == 1:
            im = im.convert("L")
        elif i % 5 == 2:
            im = im.convert("CMYK")
        im.save(img_dir / name, quality=95) if name.endswith(".jpg") else im.save(img_dir / name)
        names.append(name)
        sizes.append((w, h))
        nh = 0 if i == 4 else 1 + i % 2  # image 4 has no human: still gets global outputs
        boxes, scores, labels = [], [], []
        for k in range(nh + 2):
            x1, y1 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
            boxes.append([x1, y1, x1 + rng.uniform(8, w * 0.4), y1 + rng.uniform(8, h * 0.4)])
            scores.append(float(rng.uniform(0.3, 1.0)))
            labels.append(ls.human if k < nh else int(rng.integers(0, 2)))
        if i == 5:  # a box reaching outside the image is clipped, a zero-area one dropped
            boxes.append([w - 10, h - 10, w + 30, h + 30]), scores.append(0.9), labels.append(0)
            boxes.append([5, 5, 5, 20]), scores.append(0.9), labels.append(1)
        order = np.argsort(-np.array(scores), kind="stable")
        per_dets.append((np.array(boxes)[order], np.array(scores)[order], np.array(labels)[order]))
        gt[name] = [(0, [2, 2, 20, 30], [10, 10, 40, 40])] if i % 2 == 0 else []
    offsets = np.concatenate([[0], np.cumsum([len(d[1]) for d in per_dets])])
    dets = Detections(file_names=names, sizes=np.array(sizes), offsets=offsets,
                      boxes=np.concatenate([d[0] for d in per_dets]).astype(np.float32),
                      scores=np.concatenate([d[1] for d in per_dets]).astype(np.float32),
                      labels=np.concatenate([d[2] for d in per_dets]),
                      attrs={"detector": "tiny-sim", "score_threshold": 0.3, "box_format": "coord",
                             "labelspace": ls.name, "labelspace_fingerprint": ls.fingerprint})
    paths = {"images": img_dir, "detections": root / "dets.h5", "annotations": root / "ann.json",
             "labelspace": root / "ls.json"}
    save_detections(dets, paths["detections"])
    write_hicodet_json(make_gt(gt, sizes=sizes, ls=ls), ls, paths["annotations"])
    ls.save(paths["labelspace"])
    return paths


_WORLD = object()  # build_cache's default: the world's own annotations


def build_cache(world: dict, out, *, detections=None, annotations=_WORLD, teacher=None, split=None, resources=None,
                **run) -> Path:
    """The teacher cache of a world made by :func:`make_world_with_model` at ``out``: its
    images, detections (or ``detections``), annotations (or ``annotations``; None: none) and
    test CLIP (or ``teacher``), small shards on one thread unless ``run`` (RunOptions fields)
    says otherwise."""
    from pipeline.teacher.options import RunOptions, TeacherOptions
    from pipeline.teacher.run import build_teacher_cache

    run = {"images_per_shard": 4, "workers": 0, "jobs": 1, "progress": False, **run}
    return build_teacher_cache(out, images=world["images"], detections=detections or world["detections"],
                               annotations=world["annotations"] if annotations is _WORLD else annotations,
                               labelspace=LabelSpace.load(world["labelspace"]),
                               teacher=teacher or TeacherOptions(model=MODEL, pretrained=str(world["checkpoint"])),
                               run=RunOptions(**run), split=split, resources=resources)
