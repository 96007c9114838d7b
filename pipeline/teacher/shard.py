"""One shard of the teacher cache: decode, crop, encode and write its own chunks.

A shard is an independent task (clip-retrieval's reader -> mapper -> writer, per
partition): it reads the prepare-time arrays it needs from the store, decodes its
images into padded batches in worker threads (or processes on a GPU machine), cuts the
global input and every union box of a batch on the device (no union box in a store of
the global level only), encodes them, and hands
finished whole chunks to a writer thread (or process) so that writing overlaps with
encoding. Only after every write has landed does it set its done flag.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from cache import schema as S
from cache.store import TeacherCache
from hoicore.device import resolve_device
from hoicore.errors import HoiError
from hoicore.memory import PeriodicRelease
from hoidata import boxes as B
from hoidata import ragged
from pipeline.images import TEACHER_MAX_SIDE, BatchSpec, ImageBatch
from pipeline.teacher import crops
from pipeline.teacher.clip import Teacher
from pipeline.teacher.encoder import Encoder
from pipeline.teacher.global_pass import may_leave_image, whole_image_rois
from pipeline.teacher.options import RunOptions, TeacherOptions
from pipeline.teacher.resources import ShardResources
from pipeline.teacher.writer import ChunkFlusher, ShardWriter

log = logging.getLogger(__name__)


class ShardError(HoiError, RuntimeError):
    """A shard that cannot finish (an unreadable image with --on-error fail)."""


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard task needs, picklable for a dask.distributed worker."""

    store: str
    images_root: str
    teacher: TeacherOptions
    run: RunOptions
    model_configs: tuple[str, ...] = ()  # open_clip configs to register first (a worker has its own registry)


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


def helper_modes(run: RunOptions, device: torch.device) -> tuple[str, str]:
    """(decode, writer) modes: worker processes on a GPU unless asked otherwise, threads on
    the CPU (whose cores the encoder needs) and in daemonic processes, which may not start
    children (dask workers under a nanny, unless DASK_DISTRIBUTED__WORKER__DAEMON=False)."""
    want_processes = device.type == "cuda"
    daemon = multiprocessing.current_process().daemon
    decode = run.decode if run.decode != "auto" else ("processes" if want_processes else "threads")
    writer = run.writer if run.writer != "auto" else ("process" if want_processes else "thread")
    if daemon and (decode, writer) != ("threads", "thread"):
        _warn_daemonic()
        decode, writer = "threads", "thread"
    return decode, writer


@functools.cache
def _warn_daemonic() -> None:
    log.warning("this process is daemonic (a dask worker under a nanny?) and cannot start decoder or writer "
                "processes: using threads (DASK_DISTRIBUTED__WORKER__DAEMON=False allows them)")


def teacher_of(job: ShardJob, resources: ShardResources) -> Teacher:
    """The job's teacher from ``resources`` (loaded once per process and configuration)."""
    return resources.teacher(job.teacher, job.run.device, job.model_configs)


def run_shard(job: ShardJob, k: int, resources: ShardResources, progress=None) -> ShardStats:
    """Encode shard ``k`` of the store and mark it done. Returns its statistics.

    resources: this process's teachers, decoders and writer process (the run's, or a dask
    worker's); progress: called with (images, crops) after each batch."""
    t_start = time.perf_counter()
    cache = TeacherCache(job.store, mode="r+", check_chunks=False)  # the coordinator checked the store
    if cache.shards_done()[k]:
        return ShardStats()
    teacher = teacher_of(job, resources)
    device = resolve_device(job.run.device)
    rows = _ShardRows.read(cache, k)
    enc = Encoder(teacher, torch.from_numpy(cache.read("text/embedding")).to(device), device)
    (lo_i, hi_i), (lo_p, hi_p) = cache.shard_images(k), cache.shard_pair_rows(k)
    decode, writer_mode = helper_modes(job.run, device)
    with ShardWriter(cache, k, writer_mode, resources.writer_process) as writer, enc.session(), \
            resources.decoder(decode, job.run.workers, pin=device.type == "cuda") as decoder:
        ctx = _ShardContext(
            job=job, teacher=teacher, device=device, rows=rows, enc=enc, stats=ShardStats(),
            mean=torch.tensor(teacher.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            std=torch.tensor(teacher.std, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            img_out=ChunkFlusher(cache, ["global/embedding", "global/score", "global/dense", "images/status"],
                                 lo_i, hi_i, cache.layout.image_chunk, writer),
            pair_out=ChunkFlusher(cache, ["union/embedding", "union/score"], lo_p, hi_p, cache.layout.pair_chunk,
                                  writer) if rows.union else None)
        _encode_batches(ctx, decoder(_batch_specs(ctx, job.images_root, job.run.batch_size)), progress)
        t_write = time.perf_counter()
        writer.wait()  # re-raise a failed write before anything is marked done
        ctx.stats.write_wait_s = time.perf_counter() - t_write
    cache.mark_shard_done(k)
    ctx.stats.encoder_s = enc.total_seconds()
    ctx.stats.wall_s = time.perf_counter() - t_start
    return ctx.stats


def _encode_batches(ctx: _ShardContext, batches, progress) -> None:
    """Launch each decoded batch on the device, then collect the one before it (so the host
    prepares batch i + 1 while the device runs batch i), and flush the shard's last rows."""
    previous, release = None, PeriodicRelease()
    t_wait = time.perf_counter()
    for batch in batches:
        t_launch = time.perf_counter()
        ctx.stats.data_wait_s += t_launch - t_wait
        launched = _launch(ctx, batch)        # queued on the device
        t_collect = time.perf_counter()
        ctx.stats.launch_s += t_collect - t_launch
        if previous is not None:
            _collect(ctx, *previous, progress)  # the batch before: waits for it, not for this one
            release()  # that batch's pixels and crops are freed: give their pages back
        previous = (batch, launched)
        t_wait = time.perf_counter()
        ctx.stats.collect_s += t_wait - t_collect
    if previous is not None:
        _collect(ctx, *previous, progress)
    ctx.img_out.finish()
    if ctx.pair_out is not None:
        ctx.pair_out.finish()


@dataclass(frozen=True)
class _ShardRows:
    """What a shard reads of the store before it starts: its images and their pair rows."""

    names: list              # file names of the shard's n images
    sizes: np.ndarray        # int32 [n, 2]
    begin: np.ndarray        # int64 [n] pair rows, relative to the shard's first row
    end: np.ndarray
    union_box: np.ndarray    # float32 [rows, 4]; [0, 4] without the union level
    union: bool              # the store holds the union level: encode the pairs' union crops

    @classmethod
    def read(cls, cache: TeacherCache, k: int) -> "_ShardRows":
        (lo_i, hi_i), (lo_p, hi_p) = cache.shard_images(k), cache.shard_pair_rows(k)
        union = S.UNION in cache.levels  # a global-only store: no union crop is cut or encoded
        return cls(names=cache.read("images/file_name", slice(lo_i, hi_i)).tolist(),
                   sizes=cache.read("images/size", slice(lo_i, hi_i)),
                   begin=cache.read("pairs/begin", slice(lo_i, hi_i)) - lo_p,
                   end=cache.read("pairs/end", slice(lo_i, hi_i)) - lo_p,
                   union_box=cache.read("pairs/box", slice(lo_p, hi_p)) if union else np.zeros((0, 4), np.float32),
                   union=union)


@dataclass(frozen=True)
class _ShardContext:
    """A running shard: its job, teacher and rows, the encoder, the buffers its results go to
    (written chunk by chunk) and its statistics, all set when it starts."""

    job: ShardJob
    teacher: Teacher
    device: torch.device
    rows: _ShardRows
    enc: Encoder
    stats: ShardStats
    mean: torch.Tensor       # float32 [1, 3, 1, 1] on the device
    std: torch.Tensor
    img_out: ChunkFlusher    # the image-indexed arrays
    pair_out: ChunkFlusher | None  # the pair-indexed ones; None without the union level


def _batch_specs(ctx: _ShardContext, root: str, batch_size: int) -> list[BatchSpec]:
    """The shard's images in batches. Crops may leave their image with ``pad``, a margin, or
    boxes never clipped (image size unknown at preparation); the canvas then carries the
    on-image channel."""
    opts = ctx.job.teacher
    may_leave = may_leave_image(opts)
    specs = []
    for a in range(0, len(ctx.rows.names), batch_size):
        sizes = ctx.rows.sizes[a:a + batch_size]
        specs.append(BatchSpec(root, tuple(ctx.rows.names[a:a + batch_size]), tuple(range(a, a + len(sizes))),
                               tuple(map(tuple, sizes.tolist())), may_leave or bool((sizes <= 0).any()),
                               max_side=TEACHER_MAX_SIDE))
    return specs


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without waiting for the kernels already queued (pinned, asynchronous)."""
    if device.type != "cuda":
        return t
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


class _HostCopies(NamedTuple):
    """One batch's encoder outputs on their way to the host: float16 CPU tensors, to be read
    once the copies have landed (:attr:`_Launched.ready`)."""

    global_embedding: torch.Tensor         # [n, D]
    global_score: torch.Tensor             # [n, C]
    global_dense: torch.Tensor             # [n, h, w, D]
    union_embedding: torch.Tensor | None   # [rows, D]; None when the batch has no pair row
    union_score: torch.Tensor | None       # [rows, C]


@dataclass
class _Launched:
    """A batch queued on the device: where its results go and the copies that bring them back."""

    image_rows: np.ndarray                 # int64 [n] positions within the shard of the images that decoded
    pair_rows: np.ndarray                  # int64 [rows] pair rows, relative to the shard's first row
    host: _HostCopies | None = None        # None when no image of the batch decoded
    ready: torch.cuda.Event | None = None  # recorded behind the copies (CUDA only)


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """Device -> host, queued behind the kernels already on the stream (asynchronous)."""
    return None if t is None else t.to("cpu", non_blocking=True)


def _launch(ctx: _ShardContext, batch: ImageBatch) -> _Launched:
    """Queue the global and union passes of one batch; returns their rows and the copies back.

    Nothing here waits for the device: the canvas (pinned by the decoder) and the boxes go
    up in one asynchronous copy each, and every crop of the batch is cut by one roi_align
    per encoder pass. (A plain host-to-device copy would wait for every kernel queued
    before it, and the GPU would idle while the CPU prepares.)
    """
    run, opts, teacher, device = ctx.job.run, ctx.job.teacher, ctx.teacher, ctx.device
    for pos, error in batch.failed:
        if run.on_error != "skip":
            raise ShardError(f"{error} (pass --on-error skip to record it as skipped and go on)")
        log.warning("skipping %s", error)
        ctx.img_out.bufs["images/status"][pos] = S.STATUS_SKIPPED
        ctx.stats.skipped.append(ctx.rows.names[pos])
    idx = batch.index  # positions within the shard of the images that decoded
    out = _Launched(image_rows=idx, pair_rows=np.zeros(0, np.int64))
    if not len(idx):
        return out
    n = len(idx)
    if ctx.rows.union:
        counts = ctx.rows.end[idx] - ctx.rows.begin[idx]
        rows = np.concatenate([np.arange(ctx.rows.begin[j], ctx.rows.end[j]) for j in idx])
    else:
        counts, rows = np.zeros(n, np.int64), np.zeros(0, np.int64)
    wh = batch.sizes.astype(np.float64)
    union_box = ctx.rows.union_box[rows]
    if batch.to_decoded is not None:  # a large image was decoded reduced: its boxes follow
        union_box = (union_box * batch.to_decoded[ragged.owners(counts)]).astype(union_box.dtype)
    regions = np.concatenate([whole_image_rois(wh, opts.crop_mode),
                              B.crop_region(union_box, opts.union_margin, opts.crop_mode)])
    canvas_of = np.concatenate([np.arange(n), ragged.owners(counts)])
    rois = _upload(torch.from_numpy(np.concatenate([canvas_of[:, None], regions], 1).astype(np.float32)), device)
    pixels = _upload(batch.pixels, device).float()

    def cut(a: int, b: int, size: int) -> torch.Tensor:  # regions a..b-1 as normalised encoder inputs
        return crops.crop_normalised(pixels, rois[a:b], size, ctx.mean, ctx.std)

    g_emb, g_score, g_dense = ctx.enc.global_pass(cut(0, n, teacher.global_size))
    u_emb = u_score = None
    if len(rows):
        out.pair_rows = rows
        union = [ctx.enc.union_pass(cut(n + a, n + min(a + run.crop_batch, len(rows)), teacher.image_size))
                 for a in range(0, len(rows), run.crop_batch)]
        u_emb, u_score = torch.cat([e for e, _ in union]), torch.cat([s for _, s in union])
    # Queue the copies back now, right behind this batch's kernels: a copy issued later
    # would wait for the next batch's kernels too. The event marks when they have landed.
    out.host = _HostCopies(*map(_to_host, (g_emb, g_score, g_dense, u_emb, u_score)))
    if device.type == "cuda":
        out.ready = torch.cuda.Event()
        out.ready.record()
    return out


def _collect(ctx: _ShardContext, batch: ImageBatch, out: _Launched, progress) -> None:
    """Put one launched batch's results into the shard buffers and flush finished chunks."""
    if out.ready is not None:
        out.ready.synchronize()  # this batch's copies only, not the batch queued after it
    host, rows = out.host, out.image_rows
    if len(rows):
        ctx.img_out.bufs["global/embedding"][rows] = host.global_embedding.numpy()
        ctx.img_out.bufs["global/score"][rows] = host.global_score.numpy()
        ctx.img_out.bufs["global/dense"][rows] = host.global_dense.numpy()
        ctx.img_out.bufs["images/status"][rows] = S.STATUS_OK
        ctx.stats.images += len(rows)
    prow = out.pair_rows
    if len(prow):
        ctx.pair_out.bufs["union/embedding"][prow] = host.union_embedding.numpy()
        ctx.pair_out.bufs["union/score"][prow] = host.union_score.numpy()
        ctx.stats.crops += len(prow)
    ctx.img_out.ready(ctx.img_out.lo + batch.last + 1)
    crops = 0
    if ctx.pair_out is not None:
        ctx.pair_out.ready(ctx.pair_out.lo + int(ctx.rows.end[batch.last]))
        crops = int(ctx.rows.end[batch.last] - ctx.rows.begin[batch.first])
    if progress is not None:
        progress(batch.last - batch.first + 1, crops)
