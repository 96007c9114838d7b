"""How ``hoi detections run`` runs (:class:`DetectOptions`), declared once for the CLI and the stage.

Kept apart from :mod:`pipeline.detection.stage` so that the command line reads its fields
without importing torch (``hoi --help`` stays instant).
"""

from __future__ import annotations

from dataclasses import dataclass

from hoicore.errors import InputError
from hoicore.options import check_fields, option

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DetectOptions:
    """How to run the detector. Each field's help, choices and bounds are the command line's
    (``hoi detections run`` and ``hoi detect`` build their detector options from this table).
    The fields not marked ``runtime`` are the run's identity (compared on resume; device and
    precision as resolved, ``cuda`` or ``cpu`` and the dtype)."""

    score_threshold: float = option(0.05, "Drop detections scoring below this.", minimum=0, maximum=1)
    nms_iou: float = option(0.5, "Class-wise NMS at this IoU, on top of the model's own (1: none).",
                            minimum=0, min_open=True, maximum=1)
    max_per_image: int = option(100, "Keep the best this many detections per image.", minimum=1)
    batch_size: int = option(8, "Images per model call.", minimum=1)
    chunk_size: int = option(256, "Images per saved chunk in OUTPUT.wip/ (the unit of resuming).", minimum=1)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    precision: str = option("auto", "Detector autocast dtype on CUDA (auto: fp16, whose boxes are finer than "
                                    "bf16's); fp32 on the CPU.", PRECISIONS)
    on_error: str = option("fail", "An unreadable image stops the run (fail) or is recorded as skipped (skip).",
                           ("fail", "skip"))
    workers: int = option(2, "Image decoding threads.", minimum=0, runtime=True)
    overwrite: bool = option(False, "Start afresh: replace OUTPUT and drop OUTPUT.wip.", runtime=True)
    progress: bool = option(True, "Show a progress bar.", runtime=True)

    def __post_init__(self):
        check_fields(self, InputError)
