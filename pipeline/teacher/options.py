"""What defines a teacher (recorded in the store and compared on reuse) and how a run goes
(not part of the store's identity), declared once for the CLI, the coordinator and the
shard tasks."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from hoicore.errors import InputError
from hoicore.options import check_fields, option
from hoidata.boxes import CROP_MODES


@dataclass(frozen=True)
class TeacherOptions:
    """What defines the teacher (recorded in the store and compared on reuse). Each field's
    help, choices and bounds are the command line's (``hoi teacher-cache``); ``mean`` and
    ``std`` are for code only."""

    model: str = option(MISSING, "The CLIP: an open_clip model name (ViT-B-16-quickgelu for OpenAI weights), or "
                                 "local-dir:FOLDER.", metavar="NAME|local-dir:FOLDER", flag="teacher-model")
    pretrained: str | None = option(None, "Pretrained tag (weights must already be cached: nothing is downloaded) "
                                          "or a checkpoint file.")
    templates: tuple[str, ...] = option(("{}",), "Prompt template, repeatable: '{}' is the label space's prompt as "
                                                 "written; others get its description, e.g. 'a photo of {}.'. "
                                                 "Embeddings are averaged over templates.", flag="template")
    crop_mode: str = option("squash", "How a non-square box becomes the square encoder input.", CROP_MODES)
    union_margin: float = option(0.0, "Grow union boxes by this fraction per side (context).", minimum=0)
    global_size: int | None = option(None, "Input size of the global pass (dense map of global-size/patch tokens a "
                                           "side); default: the model's.", minimum=1)
    mean: tuple | None = None             # override the weights' normalisation
    std: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "templates", tuple(self.templates))  # a list from JSON or click reads the same
        check_fields(self, InputError)


# The fields of TeacherOptions that are command-line options.
TEACHER_CLI = ("model", "pretrained", "templates", "crop_mode", "union_margin", "global_size")


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
