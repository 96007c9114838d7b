"""One shard of the teacher cache: decode, crop, encode and write its own chunks.

A shard is an independent task (clip-retrieval's reader -> mapper -> writer, per
partition): it reads the prepare-time arrays it needs from the store, decodes its
images in worker threads (or processes on a GPU machine), cuts the global input and every union box on the device,
encodes them, and hands finished whole chunks to a writer thread so that writing
overlaps with encoding. Only after every write has landed does it set its done flag.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from cache import schema as S
from cache.store import TeacherCache
from hoidata import boxes as B
from pipeline import crops
from pipeline.clip import Teacher, load_teacher
from pipeline.encoder import Encoder
from pipeline.images import ImageFolder, prefetch
from pipeline.options import RunOptions, TeacherOptions

log = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """A shard that cannot finish (an unreadable image with --on-error fail)."""


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard task needs, picklable for a dask.distributed worker."""

    store: str
    images_root: str
    teacher: TeacherOptions
    run: RunOptions


@dataclass
class ShardStats:
    images: int = 0
    crops: int = 0
    skipped: list = field(default_factory=list)
    wall_s: float = 0.0
    data_wait_s: float = 0.0     # waiting for decoded images
    encoder_s: float = 0.0       # the image encoder itself (CUDA events on a GPU)
    launch_s: float = 0.0        # queuing crops and passes (CPU)
    collect_s: float = 0.0       # copying results back (waits for the device)
    write_wait_s: float = 0.0    # waiting for the last writes of the shard


_TEACHERS: dict = {}
_TEACHERS_LOCK = threading.Lock()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def teacher_for(job: ShardJob) -> Teacher:
    """One loaded teacher per process and configuration (dask workers reuse it across shards)."""
    t = job.teacher
    key = (t.model, t.pretrained, t.global_size, t.mean, t.std, job.run.device)
    with _TEACHERS_LOCK:
        if key not in _TEACHERS:
            _TEACHERS[key] = load_teacher(t.model, t.pretrained, global_size=t.global_size, mean=t.mean,
                                          std=t.std, device=resolve_device(job.run.device))
        return _TEACHERS[key]


class _ChunkFlusher:
    """Shard-sized numpy buffers for some arrays, written to the store chunk by chunk.

    Rows become final in order; whenever whole chunks are final they go to the writer
    thread. ``finish`` writes the rest (up to the shard's end) and waits for all writes.
    """

    def __init__(self, cache: TeacherCache, k: int, names: list[str], lo: int, hi: int, chunk: int,
                 pool: ThreadPoolExecutor, futures: list[Future]):
        self.cache, self.k, self.names, self.lo, self.hi, self.chunk = cache, k, names, lo, hi, chunk
        self.bufs = {n: np.zeros((hi - lo,) + cache.array(n).shape[1:], dtype=cache.array(n).dtype) for n in names}
        self.flushed = lo
        self.pool, self.futures = pool, futures

    def _submit(self, a: int, b: int) -> None:
        if b <= a:
            return
        parts = {n: self.bufs[n][a - self.lo:b - self.lo] for n in self.names}
        self.futures.append(self.pool.submit(self._write, a, b, parts))
        self.flushed = b

    def _write(self, a: int, b: int, parts: dict) -> None:
        for n, v in parts.items():
            self.cache.write_rows(self.k, n, a, b, v)

    def ready(self, upto: int) -> None:
        """Rows below ``upto`` are final: write the whole chunks among them."""
        self._submit(self.flushed, self.lo + (upto - self.lo) // self.chunk * self.chunk)

    def finish(self) -> None:
        self._submit(self.flushed, self.hi)


def run_shard(job: ShardJob, k: int, progress=None) -> ShardStats:
    """Encode shard ``k`` of the store and mark it done. Returns its statistics."""
    t_start = time.perf_counter()
    cache = TeacherCache(job.store, mode="r+")
    if cache.shards_done()[k]:
        return ShardStats()
    teacher = teacher_for(job)
    device = resolve_device(job.run.device)
    lo_i, hi_i = cache.shard_images(k)
    lo_p, hi_p = cache.shard_pair_rows(k)
    ctx = _ShardContext(
        job=job, teacher=teacher, device=device, names=cache.read("images/file_name", slice(lo_i, hi_i)).tolist(),
        sizes=cache.read("images/size", slice(lo_i, hi_i)),
        begin=cache.read("pairs/begin", slice(lo_i, hi_i)) - lo_p, end=cache.read("pairs/end", slice(lo_i, hi_i)) - lo_p,
        union_box=cache.read("pairs/box", slice(lo_p, hi_p)),
        enc=Encoder(teacher, torch.from_numpy(cache.read("text/embedding")).to(device), device),
        stats=ShardStats(),
        mean=torch.tensor(teacher.mean, dtype=torch.float32, device=device).view(3, 1, 1),
        std=torch.tensor(teacher.std, dtype=torch.float32, device=device).view(3, 1, 1))

    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard{k}-writer") as pool, ctx.enc.session():
        ctx.img_out = _ChunkFlusher(cache, k, ["global/embedding", "global/score", "global/dense", "images/status"],
                                    lo_i, hi_i, cache.layout["image_chunk"], pool, futures)
        ctx.pair_out = _ChunkFlusher(cache, k, ["union/embedding", "union/score"], lo_p, hi_p,
                                     cache.layout["pair_chunk"], pool, futures)
        dataset = ImageFolder(job.images_root, ctx.names, range(hi_i - lo_i), ctx.sizes, pin=device.type == "cuda")
        previous = None
        t_wait = time.perf_counter()
        decode = job.run.decode if job.run.decode != "auto" else ("processes" if device.type == "cuda" else "threads")
        for batch in prefetch(dataset, job.run.batch_size, job.run.workers, processes=decode == "processes"):
            t_launch = time.perf_counter()
            ctx.stats.data_wait_s += t_launch - t_wait
            launched = _launch(ctx, batch)        # queued on the device
            t_collect = time.perf_counter()
            ctx.stats.launch_s += t_collect - t_launch
            if previous is not None:
                _collect(ctx, *previous, progress)  # the batch before: waits for it, not for this one
            previous = (batch, launched)
            t_wait = time.perf_counter()
            ctx.stats.collect_s += t_wait - t_collect
        if previous is not None:
            _collect(ctx, *previous, progress)
        ctx.img_out.finish()
        ctx.pair_out.finish()
        t_write = time.perf_counter()
        for f in futures:
            f.result()  # re-raise a failed write before anything is marked done
        ctx.stats.write_wait_s = time.perf_counter() - t_write
    cache.mark_shard_done(k)
    ctx.stats.encoder_s = ctx.enc.total_seconds()
    ctx.stats.wall_s = time.perf_counter() - t_start
    return ctx.stats


@dataclass
class _ShardContext:
    job: ShardJob
    teacher: Teacher
    device: torch.device
    names: list
    sizes: np.ndarray        # int32 [n, 2]
    begin: np.ndarray        # int64 [n] pair rows, relative to the shard's first row
    end: np.ndarray
    union_box: np.ndarray    # float32 [rows, 4]
    enc: Encoder
    stats: ShardStats
    mean: torch.Tensor = None  # float32 [3, 1, 1] on the device
    std: torch.Tensor = None
    img_out: "_ChunkFlusher | None" = None
    pair_out: "_ChunkFlusher | None" = None


def _launch(ctx: _ShardContext, batch) -> dict:
    """Queue the global and union passes of one batch; returns device tensors and their rows.

    Nothing here waits for the device: boxes go up in one pinned, asynchronous copy and
    images were pinned by the decoder threads. (A plain host-to-device copy would wait
    for every kernel queued before it, and the GPU would idle while the CPU prepares.)
    """
    run, opts, teacher, device = ctx.job.run, ctx.job.teacher, ctx.teacher, ctx.device
    ok = []
    for item in batch:
        if item.image is not None:
            ok.append(item)
        elif run.on_error != "skip":
            raise ShardError(f"{item.error} (pass --on-error skip to record it as skipped and go on)")
        else:
            log.warning("skipping %s", item.error)
            ctx.img_out.bufs["images/status"][item.index] = S.STATUS_SKIPPED
            ctx.stats.skipped.append(ctx.names[item.index])
    idx = np.array([it.index for it in ok], dtype=np.int64)  # positions within the shard
    out = {"image_rows": idx, "pair_rows": np.zeros(0, np.int64), "union": []}
    if not ok:
        return out
    counts = ctx.end[idx] - ctx.begin[idx]
    rows = np.concatenate([np.arange(ctx.begin[j], ctx.end[j]) for j in idx])
    wh = ctx.sizes[idx].astype(np.float64)
    regions = np.concatenate([B.square(np.concatenate([np.zeros_like(wh), wh], 1), opts.crop_mode),  # whole images
                              B.crop_region(ctx.union_box[rows], opts.union_margin, opts.crop_mode)])
    regions = torch.from_numpy(regions.astype(np.float32))
    if device.type == "cuda":
        regions = regions.pin_memory()
    regions = regions.to(device, non_blocking=True)
    globals_, union_crops, at = [], [], len(ok)
    for k, (item, n) in enumerate(zip(ok, counts)):
        img = crops.normalise(item.image.to(device, non_blocking=True), ctx.mean, ctx.std)
        globals_.append(crops.crop_boxes(img, regions[k:k + 1], teacher.global_size))
        if n:
            union_crops.append(crops.crop_boxes(img, regions[at:at + n], teacher.image_size))
        at += n
    results = list(ctx.enc.global_pass(torch.cat(globals_)))
    if union_crops:
        x = torch.cat(union_crops)
        out["pair_rows"] = rows
        union = [ctx.enc.union_pass(x[a:a + run.crop_batch]) for a in range(0, len(x), run.crop_batch)]
        results += [torch.cat([e for e, _ in union]), torch.cat([s for _, s in union])]
    # Queue the copies back now, right behind this batch's kernels: a copy issued later
    # would wait for the next batch's kernels too. The event marks when they have landed.
    out["host"] = [r.to("cpu", non_blocking=True) for r in results]
    if device.type == "cuda":
        out["ready"] = torch.cuda.Event()
        out["ready"].record()
    return out


def _collect(ctx: _ShardContext, batch, out: dict, progress) -> None:
    """Put one launched batch's results into the shard buffers and flush finished chunks."""
    if "ready" in out:
        out["ready"].synchronize()  # this batch's copies only, not the batch queued after it
    host = [t.numpy() for t in out.get("host", [])]
    rows = out["image_rows"]
    if len(rows):
        ctx.img_out.bufs["global/embedding"][rows] = host[0]
        ctx.img_out.bufs["global/score"][rows] = host[1]
        ctx.img_out.bufs["global/dense"][rows] = host[2]
        ctx.img_out.bufs["images/status"][rows] = S.STATUS_OK
        ctx.stats.images += len(rows)
    prow = out["pair_rows"]
    if len(prow):
        ctx.pair_out.bufs["union/embedding"][prow] = host[3]
        ctx.pair_out.bufs["union/score"][prow] = host[4]
        ctx.stats.crops += len(prow)
    first, last = batch[0].index, batch[-1].index
    ctx.img_out.ready(ctx.img_out.lo + last + 1)
    ctx.pair_out.ready(ctx.pair_out.lo + int(ctx.end[last]))
    if progress is not None:
        progress(len(batch), int(ctx.end[last] - ctx.begin[first]))
