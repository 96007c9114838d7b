"""Peak memory of the streaming trainer against the images it streams.

Two synthetic caches of HICO-DET's label space, one ``factor`` times the other's images;
one child process per cache trains one epoch streamed from Zarr (``--in-memory no``) and
reports its own peak RSS (``VmHWM``). A bounded pass peaks at the same RSS for both: the
model, the shuffle window (``shuffle_blocks`` blocks), the blocks read ahead and the
per-image index arrays, whatever the number of images.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, sys, time
from trainer.engine import train
t0 = time.perf_counter()
train(sys.argv[1], sys.argv[2], epochs=int(sys.argv[3]), in_memory="no", device="cpu", progress=False,
      threads=int(sys.argv[4]))
try:
    peak = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))) / 1024
except OSError:
    peak = -1
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak}))
"""


def _train_in_child(cache: Path, out: Path, epochs: int, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(cache), str(out), str(epochs), str(threads)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(num_images: int = 2000, factor: int = 3, epochs: int = 1, embed_dim: int = 256,
                 grid: tuple[int, int] = (12, 12), pairs_per_image: int = 20, threads: int = 2, workdir=None,
                 echo=print) -> list[dict]:
    """Print and return, per cache size, the streamed epochs' seconds and the peak RSS.

    The smaller cache should hold several shuffle windows already (the defaults: 8 blocks of
    256 images, two windows of 4), so that both sizes reach the steady state of the pass."""
    from cache.synthetic import make_synthetic_cache
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
            got = _train_in_child(path, Path(tmp) / f"run{n}", epochs, threads)
            rows.append({"images": n, "cache_mb": size, **got})
            echo(f"  {n:>7,} images  cache {size:7,.0f} MB (written in {made:.0f} s)  "
                 f"training {got['seconds']:6.1f} s  peak RSS {got['peak_mb']:7,.0f} MB")
    if rows[0]["peak_mb"] > 0:
        echo(f"  peak RSS, {factor}x the images: {rows[1]['peak_mb'] / rows[0]['peak_mb']:.2f} x")
    return rows
