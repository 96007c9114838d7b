"""One shard of the teacher cache: decode, crop, encode and write its own chunks.

A shard is an independent task (clip-retrieval's reader -> mapper -> writer, per
partition): it reads the prepare-time arrays it needs from the store, decodes its
images in DataLoader workers, cuts the global input and every union box on the device,
encodes them, and hands finished whole chunks to a writer thread so that writing
overlaps with encoding. Only after every write has landed does it set its done flag.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from cache import schema as S
from cache.store import TeacherCache
from pipeline import crops
from pipeline.clip import Teacher, load_teacher
from pipeline.images import ImageFolder, loader

log = logging.getLogger(__name__)


class ShardError(RuntimeError):
    """A shard that cannot finish (an unreadable image with --on-error fail)."""


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard task needs, picklable for a dask.distributed worker."""

    store: str
    images_root: str
    model: str
    pretrained: str | None
    global_size: int | None
    mean: tuple | None
    std: tuple | None
    crop_mode: str
    union_margin: float
    batch_size: int = 16
    crop_batch: int = 256
    workers: int = 2
    device: str = "auto"
    on_error: str = "fail"


@dataclass
class ShardStats:
    images: int = 0
    crops: int = 0
    skipped: list = field(default_factory=list)
    wall_s: float = 0.0
    data_wait_s: float = 0.0
    encoder_s: float = 0.0


_TEACHERS: dict = {}
_TEACHERS_LOCK = threading.Lock()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def teacher_for(job: ShardJob) -> Teacher:
    """One loaded teacher per process and configuration (dask workers reuse it across shards)."""
    key = (job.model, job.pretrained, job.global_size, job.mean, job.std, job.device)
    with _TEACHERS_LOCK:
        if key not in _TEACHERS:
            _TEACHERS[key] = load_teacher(job.model, job.pretrained, global_size=job.global_size, mean=job.mean,
                                          std=job.std, device=resolve_device(job.device))
        return _TEACHERS[key]


class _Encoder:
    """The image encoder under the right precision, timing its own work."""

    def __init__(self, teacher: Teacher, text: torch.Tensor, device: torch.device):
        self.t, self.text, self.device = teacher, text, device
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
        self.seconds = 0.0

    def _run(self, visual, x: torch.Tensor):
        t0 = time.perf_counter()
        with torch.no_grad(), self.amp:
            pooled, tokens = visual(x)
        emb = pooled.float()
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        score = emb @ self.text.T
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        return emb, score, tokens

    def global_pass(self, x: torch.Tensor):
        """x: float32 [B, 3, G, G] -> emb [B, D], raw cosine [B, C], dense [B, h, w, D] (all float32)."""
        emb, score, tokens = self._run(self.t.global_model.visual, x)
        with torch.no_grad():
            dense = tokens.float() @ self.t.global_model.visual.proj.float()
        h, w = self.t.grid
        return emb, score, dense.reshape(len(x), h, w, -1)

    def union_pass(self, x: torch.Tensor):
        """x: float32 [M, 3, S, S] -> emb [M, D], raw cosine [M, C]."""
        emb, score, _ = self._run(self.t.model.visual, x)
        return emb, score


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
    device = resolve_device(job.device)
    lo_i, hi_i = cache.shard_images(k)
    lo_p, hi_p = cache.shard_pair_rows(k)
    names = cache.read("images/file_name", slice(lo_i, hi_i)).tolist()
    sizes = cache.read("images/size", slice(lo_i, hi_i))
    begin = cache.read("pairs/begin", slice(lo_i, hi_i))
    end = cache.read("pairs/end", slice(lo_i, hi_i))
    union_box = torch.from_numpy(cache.read("pairs/box", slice(lo_p, hi_p)))
    text = torch.from_numpy(cache.read("text/embedding")).to(device)
    enc = _Encoder(teacher, text, device)
    stats = ShardStats()

    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard{k}-writer") as pool:
        img_out = _ChunkFlusher(cache, k, ["global/embedding", "global/score", "global/dense", "images/status"],
                                lo_i, hi_i, cache.layout["image_chunk"], pool, futures)
        pair_out = _ChunkFlusher(cache, k, ["union/embedding", "union/score"], lo_p, hi_p,
                                 cache.layout["pair_chunk"], pool, futures)
        dataset = ImageFolder(job.images_root, names, range(hi_i - lo_i), sizes)
        t_wait = time.perf_counter()
        for batch in loader(dataset, job.batch_size, job.workers):
            stats.data_wait_s += time.perf_counter() - t_wait
            _encode_batch(batch, job, teacher, enc, device, sizes, begin, end, lo_i, lo_p, union_box,
                          img_out, pair_out, stats, names)
            last = batch[-1].index
            img_out.ready(lo_i + last + 1)
            pair_out.ready(int(end[last]))
            if progress is not None:
                progress(len(batch), int(end[last] - begin[batch[0].index]))
            t_wait = time.perf_counter()
        img_out.finish()
        pair_out.finish()
        for f in futures:
            f.result()  # re-raise a failed write before anything is marked done
    cache.mark_shard_done(k)
    stats.encoder_s = enc.seconds
    stats.wall_s = time.perf_counter() - t_start
    return stats


def _encode_batch(batch, job, teacher, enc, device, sizes, begin, end, lo_i, lo_p, union_box,
                  img_out, pair_out, stats, names):
    """Global and union passes for one batch of decoded images, into the shard buffers."""
    globals_, ok_rows, union_crops, union_rows = [], [], [], []
    for item in batch:
        j = item.index  # position within the shard
        if item.image is None:
            if job.on_error != "skip":
                raise ShardError(f"{item.error} (pass --on-error skip to record it as skipped and go on)")
            log.warning("skipping %s", item.error)
            img_out.bufs["images/status"][j] = S.STATUS_SKIPPED
            stats.skipped.append(names[j])
            continue
        img = crops.normalise(item.image.to(device, non_blocking=True), teacher.mean, teacher.std)
        w, h = int(sizes[j][0]), int(sizes[j][1])
        globals_.append(crops.crop_boxes(img, crops.whole_image_box(w, h, device), teacher.global_size,
                                         job.crop_mode))
        ok_rows.append(j)
        b, e = int(begin[j]) - lo_p, int(end[j]) - lo_p
        if e > b:
            boxes = crops.with_margin(union_box[b:e].to(device), job.union_margin)
            union_crops.append(crops.crop_boxes(img, boxes, teacher.image_size, job.crop_mode))
            union_rows.append(np.arange(b, e))
    if ok_rows:
        emb, score, dense = enc.global_pass(torch.cat(globals_))
        rows = np.array(ok_rows)
        img_out.bufs["global/embedding"][rows] = emb.cpu().numpy()
        img_out.bufs["global/score"][rows] = score.cpu().numpy()
        img_out.bufs["global/dense"][rows] = dense.cpu().numpy()
        img_out.bufs["images/status"][rows] = S.STATUS_OK
        stats.images += len(rows)
    if union_crops:
        x, rows = torch.cat(union_crops), np.concatenate(union_rows)
        for a in range(0, len(x), job.crop_batch):
            emb, score = enc.union_pass(x[a:a + job.crop_batch])
            r = rows[a:a + job.crop_batch]
            pair_out.bufs["union/embedding"][r] = emb.cpu().numpy()
            pair_out.bufs["union/score"][r] = score.cpu().numpy()
        stats.crops += len(x)
