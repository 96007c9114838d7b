"""What the shards run by one process share, made and closed by whoever runs them.

A :class:`ShardResources` holds, for as long as a run (or a dask worker) lasts:

- the loaded teachers, one per configuration: the coordinator loads the teacher to plan
  the store, and its shards use that same one; a dask worker reuses its own across shards;
- idle decoders by (mode, workers, pin), lent to one running shard at a time, so decoder
  worker processes are spawned once per run, not once per shard;
- the writer process (``--writer process``), spawned on first use, replaced when it died.

The coordinator (:func:`pipeline.teacher.run.build_teacher_cache`) makes one for its run and
closes it at the end. On a dask.distributed cluster each worker gets its own from
:class:`pipeline.teacher.cluster.ShardResourcesPlugin`, closed when the worker closes. None of it is module state: a
forked child (dask's process scheduler, a user's own fork) starts with nothing of its
parent's, whose threads and processes do not survive a fork.
"""

from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator

from hoicore.device import resolve_device
from pipeline.images import Decoder
from pipeline.teacher.clip import Teacher, load_teacher, register_model_configs
from pipeline.teacher.options import TeacherOptions
from pipeline.teacher.writer import new_writer_process


class ShardResources:
    """Teachers, idle decoders and the writer process of the shards one process runs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._teachers: dict[tuple, Teacher] = {}
        self._idle: dict[tuple, list[Decoder]] = {}
        self._writer: ProcessPoolExecutor | None = None

    def teacher(self, t: TeacherOptions, device: str, model_configs: tuple[str, ...] = ()) -> Teacher:
        """The teacher of ``t`` on ``device``, loaded on first use (after registering
        ``model_configs``, open_clip configs: a dask worker has its own registry)."""
        key = (t.model, t.pretrained, t.global_size, t.mean, t.std, device)
        with self._lock:
            if key not in self._teachers:
                register_model_configs(model_configs)
                self._teachers[key] = load_teacher(t.model, t.pretrained, global_size=t.global_size, mean=t.mean,
                                                   std=t.std, device=resolve_device(device))
            return self._teachers[key]

    @contextmanager
    def decoder(self, mode: str, workers: int, pin: bool) -> Iterator[Decoder]:
        """An idle decoder of these settings, or a new one; given back when the block ends
        normally (one left mid-iteration by an error is closed, not reused)."""
        key = (mode, workers, pin)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            dec = idle.pop() if idle else None
        dec = dec or Decoder(*key)
        try:
            yield dec
        except BaseException:
            dec.close()
            raise
        with self._lock:
            self._idle.setdefault(key, []).append(dec)

    def writer_process(self, fresh: bool = False) -> ProcessPoolExecutor:
        """The writer process, started on first use; ``fresh``: replace one that died."""
        with self._lock:
            if self._writer is None or fresh:
                self._writer = new_writer_process()
            return self._writer

    def close(self) -> None:
        """Stop the decoders' workers and the writer process; drop the teachers."""
        with self._lock:
            decoders = [d for idle in self._idle.values() for d in idle]
            writer, self._writer = self._writer, None
            self._idle.clear()
            self._teachers.clear()
        for d in decoders:
            d.close()
        if writer is not None:
            writer.shutdown(wait=True)

    def __enter__(self) -> "ShardResources":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
