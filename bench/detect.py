"""``hoi detect`` on the bundled benchmark's test images against the teacher path
(``python -m bench --only detect``, after ``make demo``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from cache.store import open_cache
from hoi.demo import demo_paths, demo_teacher
from hoi.detect import run_detect
from hoidata.labelspace import LabelSpace
from minibench.build import layout
from pipeline.detect_options import DetectOptions
from pipeline.options import RunOptions
from pipeline.run import build_teacher_cache


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
                                run=RunOptions(levels=levels, images_per_shard=1024, threads=1, progress=False))
            timed[levels] = time.perf_counter() - t0
        crops = open_cache(Path(tmp) / "all.zarr").layout["num_pairs"]
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
