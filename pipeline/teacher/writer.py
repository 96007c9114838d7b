"""Writing a shard's finished chunks off the thread that feeds the encoder.

Rows become final batch by batch; :class:`ChunkFlusher` keeps shard-sized buffers and
hands every run of whole chunks to a :class:`ShardWriter` as soon as it is final. The
writer is a thread of this process (``mode="thread"``) or a writer process kept for the
whole run (``mode="process"``): Zarr's Python-level work per chunk (its event loop, the
codec pipeline) then takes no GIL from the thread that queues work on the GPU. Either way
a write goes through ``TeacherCache.write_rows``, the one place that checks the rows are
whole chunks of the shard, and the shard waits for every write before it marks itself
done.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

import numpy as np

from cache.store import TeacherCache
from hoicore.errors import RunError

WRITER_MODES = ("thread", "process")


def _write_parts(cache: TeacherCache, k: int, parts: dict) -> None:
    for name, (a, b, value) in parts.items():
        cache.write_rows(k, name, a, b, value)


# -- in the writer process -------------------------------------------------------------
# The stores this writer process has open (token -> TeacherCache, the few shards being
# written). It exists in the writer process only, which the run's ShardResources started
# and stops; the process that runs the shards never fills it.
_OPEN: OrderedDict = OrderedDict()


def _watch_parent(parent: int) -> None:
    """Leave when the coordinator dies (killed, say): a writer must not outlive its run."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _start_writer_process(parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


def _write_in_process(path: str, token: str, k: int, parts: dict) -> None:
    cache = _OPEN.get(token)
    if cache is None:
        cache = _OPEN[token] = TeacherCache(path, mode="r+", check_chunks=False)  # checked by the coordinator
        while len(_OPEN) > 8:
            _OPEN.popitem(last=False)
    _write_parts(cache, k, parts)


# -- in the shard's process -----------------------------------------------------------
def new_writer_process() -> ProcessPoolExecutor:
    """A writer process for this process's shards (spawned: the parent holds CUDA); its
    owner (:class:`pipeline.teacher.resources.ShardResources`) keeps it for the run."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_writer_process, initargs=(os.getpid(),))


class ShardWriter:
    """The chunk writes of shard ``k``; ``wait`` re-raises the first failed one.

    mode "thread": a writer thread of the shard's own. mode "process": the writer process
    ``writer_process(fresh)`` returns (the run's; ``fresh=True`` replaces one that died).
    """

    def __init__(self, cache: TeacherCache, k: int, mode: str = "thread",
                 writer_process: Callable[[bool], ProcessPoolExecutor] | None = None):
        if mode not in WRITER_MODES:
            raise ValueError(f"writer must be one of {', '.join(WRITER_MODES)}, not {mode!r}")
        if mode == "process" and writer_process is None:
            raise ValueError("a process writer needs the run's writer process (ShardResources.writer_process)")
        self.cache, self.k, self._writer_process = cache, k, writer_process
        self.futures: list[Future] = []
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"shard{k}-writer") if mode == "thread" else None
        self._token = uuid.uuid4().hex  # the writer process opens the store once per shard

    def submit(self, parts: dict[str, tuple[int, int, np.ndarray]]) -> None:
        """Write rows [a, b) of each named array (whole chunks of the shard)."""
        if self._thread is not None:
            self.futures.append(self._thread.submit(_write_parts, self.cache, self.k, parts))
            return
        args = (_write_in_process, str(self.cache.path), self._token, self.k, parts)
        try:
            self.futures.append(self._writer_process(False).submit(*args))
        except BrokenProcessPool:  # an earlier writer process died; this shard starts a new one
            self.futures.append(self._writer_process(True).submit(*args))

    def wait(self) -> None:
        """Block until every write has landed; re-raise the first that failed."""
        try:
            for f in self.futures:
                f.result()
        except BrokenProcessPool as e:
            raise RunError(f"the writer process died while writing shard {self.k} ({e}); nothing of the "
                               "shard is marked done: rerun to resume, or pass --writer thread") from e

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        # also on an error: no write of this shard may still be running once it returns
        for f in self.futures:
            f.exception()
        if self._thread is not None:
            self._thread.shutdown(wait=True)


class ChunkFlusher:
    """Shard-sized numpy buffers for some arrays, written to the store chunk by chunk.

    Rows become final in order; whenever whole chunks are final they go to the writer.
    ``finish`` writes the rest (up to the shard's end).
    """

    def __init__(self, cache: TeacherCache, names: list[str], lo: int, hi: int, chunk: int, writer: ShardWriter):
        self.names, self.lo, self.hi, self.chunk, self.writer = names, lo, hi, chunk, writer
        self.bufs = {n: np.zeros((hi - lo,) + cache.array(n).shape[1:], dtype=cache.array(n).dtype) for n in names}
        self.flushed = lo

    def _submit(self, a: int, b: int) -> None:
        if b > a:
            self.writer.submit({n: (a, b, self.bufs[n][a - self.lo:b - self.lo]) for n in self.names})
            self.flushed = b

    def ready(self, upto: int) -> None:
        """Rows below ``upto`` are final: write the whole chunks among them."""
        self._submit(self.flushed, self.lo + (upto - self.lo) // self.chunk * self.chunk)

    def finish(self) -> None:
        self._submit(self.flushed, self.hi)
