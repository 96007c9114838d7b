"""``hoi detect`` on the bundled benchmark's test images against the teacher path
(``python -m bench --only detect``, after ``make demo``), and the two paths' cost per image
at the paper's scale (ViT-B/16 at 224 px, HICO-DET's 40 pairs an image).

On the bundled benchmark the small CLIP's global pass (192 px, 144 tokens) costs about two
of its crops (128 px, 64 tokens), which caps the ratio at 40 pairs near 20x however cheap
the student is; with the paper's teacher a crop costs as much as the whole image."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from bench.timing import ms_per_call
from cache.store import open_cache
from hoi.demo import demo_paths, demo_teacher
from hoi.detect import run_detect
from hoidata.labelspace import LabelSpace
from minibench.build import layout
from pipeline.detection.options import DetectOptions
from pipeline.teacher.options import RunOptions
from pipeline.teacher.run import build_teacher_cache


def bench_detect(demo: str = "runs/demo", pairs_at: int = 40) -> None:
    """``hoi detect`` on the bundled benchmark's test images (after ``make demo``): images/s
    and its split, and the student path's cost per image (CLIP's global pass + the student)
    against the teacher path (global pass + CLIP on every union crop) on the same images and
    pairs, as measured and extrapolated to ``pairs_at`` candidate pairs per image (HICO-DET's)."""
    p = demo_paths(demo)
    checkpoint = p["ablation"] / "all-late" / "checkpoint"
    if not checkpoint.is_dir():
        click.echo(f"hoi detect: skipped ({checkpoint} is missing: run make demo first)")
        return
    w = layout(p["world"])
    ls = LabelSpace.load(w["labelspace"])
    with tempfile.TemporaryDirectory() as tmp:
        info = run_detect(w["images_test"], checkpoint, Path(tmp) / "p.npz", options=DetectOptions(progress=False))
        n, pairs = info["num_images"], info["num_pairs"]
        sec = info["seconds"]
        timed = {}
        for levels in ("global", "all"):  # the same images and detections, one shard, no helper processes
            t0 = time.perf_counter()
            build_teacher_cache(Path(tmp) / f"{levels}.zarr", images=w["images_test"], detections=w["detections_test"],
                                labelspace=ls, teacher=demo_teacher(),
                                run=RunOptions(levels=levels, images_per_shard=1024, jobs=1, progress=False))
            timed[levels] = time.perf_counter() - t0
        crops = open_cache(Path(tmp) / "all.zarr").layout.num_pairs
    rate = info["images_per_s"]
    click.echo(f"hoi detect on {n} test images ({pairs / n:.1f} pairs an image): {rate['total']:.1f} images/s "
               f"(detector {rate['detector']:.1f}, CLIP global pass {rate['clip']:.1f}, student {rate['student']:.1f})")
    global_ms = 1000 * sec["clip"] / n
    student_ms_pair = 1000 * sec["student"] / max(pairs, 1)
    crop_ms = 1000 * max(timed["all"] - timed["global"], 0) / max(crops, 1)
    for k, label in ((pairs / n, "measured"), (pairs_at, "HICO-DET's")):
        student, teacher = global_ms + k * student_ms_pair, global_ms + k * crop_ms
        click.echo(f"  at {k:.0f} pairs an image ({label}): student path {student:.1f} ms, teacher path "
                   f"{teacher:.1f} ms per image: {teacher / student:.1f}x cheaper")
    click.echo(f"  (teacher cache of the same images: {timed['global']:.1f} s with --levels global, "
               f"{timed['all']:.1f} s with every union crop; {crop_ms:.2f} ms a crop)")


def bench_paper_scale(num_images: int = 2, pairs: int = 40, model: str = "ViT-B-16", grid_px: int = 224,
                      device: str = "auto", echo=print) -> dict:
    """The student path against the teacher path per image at the paper's scale: open_clip's
    ``model`` (random weights: only the cost matters) at ``grid_px`` for the global pass and
    the crops alike, the default student over its 14 x 14 map, ``pairs`` pairs an image.

    Both paths cut their regions from the same image canvas and run the pipeline's own
    encoder (:class:`pipeline.teacher.encoder.Encoder`, bf16 on CUDA): the teacher path is the global
    pass and one pass per union crop; the student path the global pass and the student's
    heads on every pair. Measured, not extrapolated. Returns the milliseconds per image."""
    from hoicore.device import resolve_device
    from hoidata.labelspace import hico_det
    from pipeline.teacher import crops
    from pipeline.teacher.clip import load_teacher
    from pipeline.teacher.encoder import Encoder
    from trainer.config import TrainConfig
    from trainer.engine import autocast_for
    from trainer.geometry import pair_block
    from trainer.model import Student, pair_scores

    dev = resolve_device(device)
    ls = hico_det()
    teacher = load_teacher(model, None, global_size=grid_px, device=dev)
    dim = teacher.model.visual.proj.shape[1]
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(ls.num_classes, dim, generator=g), dim=1).to(dev)
    encoder = Encoder(teacher, text, dev)
    mean = torch.tensor(teacher.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(teacher.std, device=dev).view(1, 3, 1, 1)
    width, height, humans = 640, 480, 4
    objects = -(-pairs // humans)
    canvas = (torch.rand(num_images, 3, height, width, generator=g) * 255).to(dev)
    # humans x objects boxes per image, every human paired with every object, the first ``pairs`` kept
    k = humans + objects
    xy = torch.rand(num_images * k, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
    wh = 40 + torch.rand(num_images * k, 2, generator=g) * torch.tensor([width * 0.4, height * 0.4])
    det_box = torch.cat([xy, xy + wh], 1).numpy().astype(np.float32)
    hum = np.array([i * k + h for i in range(num_images) for h in range(humans) for _ in range(objects)])
    obj = np.array([i * k + humans + o for i in range(num_images) for _ in range(humans) for o in range(objects)])
    keep = np.concatenate([np.arange(i * humans * objects, i * humans * objects + pairs) for i in range(num_images)])
    hum, obj = hum[keep], obj[keep]
    labels = np.where(np.arange(num_images * k) % k < humans, ls.human, (ls.human + 1) % ls.num_objects)
    config = TrainConfig(device=str(dev), progress=False)
    student = Student(config, text.float().cpu()).to(dev).eval()
    block = pair_block(np.arange(num_images), np.tile([width, height], (num_images, 1)).astype(np.float32),
                       det_box=det_box, det_score=np.ones(len(det_box), np.float32), det_label=labels, human=hum,
                       obj=obj, pair_offsets=np.arange(num_images + 1) * pairs, grid=teacher.grid,
                       crop_mode="pad", union_margin=0.0)
    mask = torch.from_numpy(ls.object_class_mask).to(dev)
    whole = torch.tensor([[i, 0, 0, width, height] for i in range(num_images)], dtype=torch.float32, device=dev)
    unions = torch.cat([torch.from_numpy(np.repeat(np.arange(num_images), pairs))[:, None].float(),
                        torch.from_numpy(block.boxes[:, 2])], 1).to(dev)

    def global_pass():
        x = crops.crop_normalised(canvas, whole, teacher.global_size, mean, std)
        return encoder.global_pass(x)[2]

    def union_crops():
        for s in range(0, len(unions), pairs):  # one image's crops a batch
            encoder.union_pass(crops.crop_normalised(canvas, unions[s:s + pairs], teacher.image_size, mean, std))

    def student_heads(dense):
        block.dense = dense.cpu().numpy()
        batch = block.to_batch(mask, dev)
        with autocast_for(dev, config.amp):
            pair_scores(student(batch), batch.class_mask)

    with encoder.session():
        dense = global_pass()  # also the encoder's warm-up for the crops (the same weights)
        ms = {"global": ms_per_call(global_pass, dev, warm=False),
              "crops": ms_per_call(union_crops, dev, warm=False),
              "student": ms_per_call(lambda: student_heads(dense), dev, repeats=5)}
    ms = {k: v / num_images for k, v in ms.items()}
    student_path, teacher_path = ms["global"] + ms["student"], ms["global"] + ms["crops"]
    echo(f"at the paper's scale ({model}, random weights, {grid_px} px for the whole image and each crop, "
         f"{pairs} pairs an image, {num_images} images, {dev}): global pass {ms['global']:.1f} ms, "
         f"{pairs} union crops {ms['crops']:.1f} ms, student {ms['student']:.1f} ms per image")
    echo(f"  student path {student_path:.1f} ms, teacher path {teacher_path:.1f} ms per image: "
         f"{teacher_path / student_path:.1f}x cheaper")
    return {**ms, "student_path": student_path, "teacher_path": teacher_path}
