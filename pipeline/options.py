"""What defines a teacher (recorded in the store and compared on reuse) and how a run goes
(not part of the store's identity), declared once for the CLI, the coordinator and the
shard tasks."""

from __future__ import annotations

from dataclasses import dataclass

from hoicore.options import check_fields, option
from hoidata.errors import InputError


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
    """How to run (not part of the store's identity). Each field's help and choices are the
    command line's (``hoi teacher-cache`` builds its run options from this table)."""

    images_per_shard: int = option(256, "Images per shard (one dask task; also the unit of resuming).", minimum=1)
    image_chunk: int = option(16, "Zarr chunk along images (lowered to a divisor of --images-per-shard).",
                            minimum=1)
    pair_chunk: int = option(256, "Zarr chunk along pair rows.", minimum=1)
    batch_size: int = option(32, "Images per encoder batch (global pass), decoded into one padded canvas.",
                           minimum=1)
    crop_batch: int = option(256, "Union crops per encoder batch.", minimum=1)
    workers: int = option(4, "Threads or processes decoding images ahead of the encoder.", minimum=0)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    jobs: int = option(2, "Shards run at once by the local scheduler: with two, one shard's start and end "
                        "(decoding its first batch, waiting for its last writes) overlap with the other's work.",
                    minimum=1)
    scheduler: str | None = option(None, "A dask.distributed scheduler address (tcp://host:8786): run the shards "
                                       "on that cluster.", metavar="ADDRESS")
    on_error: str = option("fail", "An unreadable image stops the run (fail) or is recorded as skipped (skip).",
                         ("fail", "skip"))
    decode: str = option("auto", "Decode in worker threads or processes (auto: processes on a GPU, threads on "
                               "the CPU).", ("auto", "threads", "processes"))
    writer: str = option("auto", "Write chunks from a thread or a writer process (auto: a process on a GPU, a "
                               "thread on the CPU), keeping Zarr's work away from the thread that feeds the GPU.",
                       ("auto", "thread", "process"))
    levels: str = option("all", "What the store holds: all (the global pass per image and a CLIP pass per union box, "
                              "the teacher's supervision) or global (the global pass only: what a trained student "
                              "reads at test time; no union crops).", ("all", "global"))
    overwrite: bool = option(False, "Start afresh instead of resuming an existing store.")
    progress: bool = option(True, "Show a progress bar.")

    def __post_init__(self):
        check_fields(self, InputError)
