"""What the store's integrity costs (``make bench``, part of ``--only store``), in this run:

- chunk binding: reading every array of a finished store with each chunk's placement
  checked (its crc32c trailer against the record ``finalize`` made) against the same reads
  with the check switched off;
- recording it: the finalize-time pass that reads each chunk file's last 4 bytes, against
  one full read of the store.

The cost of durability (fsync before a shard's done flag) is timed by the teacher bench,
on the real pipeline (``bench.teacher``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.synthetic_cache import make_synthetic_cache
from cache.store import open_cache


def _read_all(cache) -> None:
    for name in cache.array_names:
        cache.read(name)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_store(num_images: int = 2048, repeats: int = 5, echo=print) -> dict:
    """Print and return the read overhead of chunk binding and the cost of recording it.
    Small chunks (16 images, 256 pairs) make the per-chunk check weigh as much as it can."""
    tmp = Path(tempfile.mkdtemp(prefix="hoi-bench-store-"))
    try:
        path = make_synthetic_cache(tmp / "s.zarr", num_images=num_images, pairs_per_image=8, num_classes=600,
                                    embed_dim=512, grid=(7, 7), images_per_shard=512, image_chunk=16,
                                    pair_chunk=256)
        bound = open_cache(path)
        unbound = open_cache(path)
        table, unbound._store.crc = unbound._store.crc, {}  # the same store with the check off
        chunks = sum(len(t) // 4 for t in table.values())
        assert bound.placement_checked and not unbound.placement_checked
        _read_all(bound)  # page cache warm for both
        t_bound = t_plain = float("inf")
        for _ in range(repeats):  # interleaved: drift in the machine's speed hits both alike
            t_plain = min(t_plain, _best(lambda: _read_all(unbound), 1))
            t_bound = min(t_bound, _best(lambda: _read_all(bound), 1))
        t_record = _best(bound.record_chunk_crc, repeats)
        res = {"chunks": chunks, "read_s": t_plain, "read_bound_s": t_bound, "binding_read_ratio": t_bound / t_plain,
               "record_s": t_record, "record_to_read_ratio": t_record / t_plain}
        echo(f"store integrity: synthetic store, {num_images} images, {chunks} chunks "
             f"({sum(f.stat().st_size for f in path.rglob('c.*')) / 2**20:.0f} MiB)")
        echo(f"  read every array, placement checked   {t_bound:7.3f} s")
        echo(f"  read every array, unchecked           {t_plain:7.3f} s")
        echo(f"  chunk binding on reads                {t_bound / t_plain:7.3f} x")
        echo(f"  recording it at finalize              {t_record:7.3f} s ({t_record / t_plain:.3f} of one full read)")
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
