"""What defines a teacher (recorded in the store and compared on reuse) and how a run goes
(not part of the store's identity), declared once for the CLI, the coordinator and the
shard tasks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherOptions:
    """What defines the teacher (recorded in the store and compared on reuse)."""

    model: str                            # open_clip name, or local-dir:FOLDER
    pretrained: str | None = None         # tag or checkpoint file
    templates: tuple[str, ...] = ("{}",)  # prompt templates, averaged
    crop_mode: str = "squash"             # squash | pad | center
    union_margin: float = 0.0             # fraction of the union box added on each side
    global_size: int | None = None        # input size of the global pass (default: the model's)
    mean: tuple | None = None             # override the weights' normalisation
    std: tuple | None = None


@dataclass(frozen=True)
class RunOptions:
    """How to run (not part of the store's identity)."""

    images_per_shard: int = 256     # one dask task
    image_chunk: int = 16           # Zarr chunk along images (a divisor of images_per_shard)
    pair_chunk: int = 256           # Zarr chunk along pair rows
    batch_size: int = 32            # images per global pass
    crop_batch: int = 256           # union crops per encoder pass
    workers: int = 4                # decoding threads or processes
    device: str = "auto"            # auto: CUDA when present
    threads: int = 2                # shards at once on the local scheduler (one fills while one drains)
    scheduler: str | None = None    # a dask.distributed address
    on_error: str = "fail"          # fail | skip (unreadable images)
    decode: str = "auto"            # threads | processes | auto (processes on a GPU)
    writer: str = "auto"            # thread | process | auto (a writer process on a GPU)
    overwrite: bool = False         # start afresh instead of resuming
    progress: bool = True

    def __post_init__(self):
        for name, allowed in (("on_error", ("fail", "skip")), ("decode", ("auto", "threads", "processes")),
                              ("writer", ("auto", "thread", "process"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
