"""Peak memory of the streaming trainer and of the teacher cache against the images they go through.

Trainer: two synthetic caches of HICO-DET's label space, one ``factor`` times the other's
images; one child process per cache trains one epoch streamed from Zarr (``--in-memory
no``) and reports its own peak RSS (``VmHWM``). A bounded pass peaks at the same RSS for
both: the model, the shuffle window (``shuffle_blocks`` blocks), the blocks read ahead and
the per-image index arrays, whatever the number of images. Children run as the ``hoi``
program does, with glibc's heap tunables (:data:`hoicore.memory.HEAP_TUNABLES`); the
larger cache is trained once more with glibc's defaults, the baseline, whose heap grows
with the steps run.

Teacher cache: the same for building a cache of synthetic photos of varying sizes with the
bundled small CLIP, in shards of a fixed size; each child also reports glibc's heap figures
at the end (bytes in use, free space held), which say what grew with the images: live
data (per-image metadata: names, sizes, pair index) or holes left by freed buffers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.child import PEAK_RSS, run_json
from hoicore.memory import with_heap_tunables, without_heap_tunables

HEAPS = {"tuned": ("glibc tuned", with_heap_tunables), "default": ("glibc defaults", without_heap_tunables)}

_TRAIN_CHILD = """
import json, sys, time
from trainer.engine import train
t0 = time.perf_counter()
train(sys.argv[1], sys.argv[2], epochs=int(sys.argv[3]), in_memory="no", device="cpu", progress=False,
      threads=int(sys.argv[4]))
""" + PEAK_RSS + """
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak}))
"""


_TEACHER_CHILD = """
import json, sys, time
from hoicore.memory import heap_stats
from hoi.demo import demo_teacher
from hoidata.labelspace import hico_det
from pipeline.teacher.options import RunOptions
from pipeline.teacher.run import build_teacher_cache
t0 = time.perf_counter()
build_teacher_cache(sys.argv[1], images=sys.argv[2], detections=sys.argv[3], labelspace=hico_det(),
                    teacher=demo_teacher(), run=RunOptions(images_per_shard=int(sys.argv[4]), progress=False))
""" + PEAK_RSS + """
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak, "heap": heap_stats()}))
"""


def bench_memory(num_images: int = 2000, factor: int = 3, epochs: int = 1, embed_dim: int = 256,
                 grid: tuple[int, int] = (12, 12), pairs_per_image: int = 20, threads: int = 2, workdir=None,
                 echo=print) -> list[dict]:
    """Print and return, per cache size, the streamed epochs' seconds and the peak RSS (rows
    'heap': 'tuned' for both sizes, then 'default' for the larger: the baseline).

    The smaller cache should hold several shuffle windows already (the defaults: 8 blocks of
    256 images, two windows of 4), so that both sizes reach the steady state of the pass."""
    from bench.synthetic_cache import make_synthetic_cache
    from hoidata.labelspace import LabelSpace

    ls = LabelSpace.load("hico_det")
    rows = []
    echo(f"streaming trainer memory: {epochs} epoch(s) streamed from Zarr (--in-memory no), HICO-DET classes, "
         f"D={embed_dim}, grid {grid[0]}x{grid[1]}, {pairs_per_image} pairs per image, {threads} threads")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for n in (num_images, num_images * factor):
            t0 = time.perf_counter()
            path = make_synthetic_cache(Path(tmp) / f"c{n}", num_images=n, pairs_per_image=pairs_per_image,
                                        num_classes=None, embed_dim=embed_dim, grid=grid, labelspace=ls,
                                        images_per_shard=512, with_gt=False)
            made = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20
            for heap in ("tuned", "default") if n > num_images else ("tuned",):
                name, env = HEAPS[heap]
                got = run_json(_TRAIN_CHILD, path, Path(tmp) / f"run{n}{heap}", epochs, threads,
                               env=env(dict(os.environ)))
                rows.append({"images": n, "cache_mb": size, "heap": heap, **got})
                echo(f"  {n:>7,} images  cache {size:7,.0f} MB (written in {made:.0f} s)  {name:14s}  "
                     f"training {got['seconds']:6.1f} s  peak RSS {got['peak_mb']:7,.0f} MB")
    small, large, default = rows
    if small["peak_mb"] > 0:
        echo(f"  peak RSS, {factor}x the images: {large['peak_mb'] / small['peak_mb']:.2f} x; glibc's defaults on the "
             f"larger cache: {default['peak_mb'] / large['peak_mb']:.2f} x the peak, "
             f"{default['seconds'] / large['seconds']:.2f} x the time")
    return rows


def bench_teacher_memory(num_images: int = 256, factor: int = 4, images_per_shard: int = 128, workdir=None,
                         echo=print) -> list[dict]:
    """Print and return, per number of photos, the teacher cache's seconds, peak RSS and
    glibc's heap figures at the end (see the module docstring)."""
    from bench.teacher import make_images

    rows = []
    echo(f"teacher cache memory: synthetic photos of varying sizes (about 640 x 480), 2 people and 3 objects each, "
         f"the bundled small CLIP, shards of {images_per_shard} images")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for n in (num_images, num_images * factor):
            dets = make_images(Path(tmp) / f"p{n}" / "images", n, humans=2, objects=3, vary_size=True)
            got = run_json(_TEACHER_CHILD, Path(tmp) / f"c{n}.zarr", dets.parent / "images", dets, images_per_shard,
                           env=with_heap_tunables(dict(os.environ)))  # as the hoi program runs
            rows.append({"images": n, **got})
            heap = got["heap"]
            held = (f"heap at the end: {heap['in_use']:5,.0f} MB in use, {heap['free']:5,.0f} MB free space held"
                    if heap else "heap figures n/a")
            echo(f"  {n:>7,} images  {got['seconds']:6.1f} s  peak RSS {got['peak_mb']:7,.0f} MB  ({held})")
    if rows[0]["peak_mb"] > 0:
        echo(f"  peak RSS, {factor}x the images: {rows[1]['peak_mb'] / rows[0]['peak_mb']:.2f} x")
    if rows[0]["heap"] and rows[1]["heap"]:
        grown = {k: rows[1]["heap"][k] - rows[0]["heap"][k] for k in ("in_use", "free")}
        echo(f"  grown with the images: {grown['in_use']:+,.1f} MB in use (live: per-image metadata), "
             f"{grown['free']:+,.1f} MB of free heap space (holes of freed buffers, not resident after a trim)")
    return rows
