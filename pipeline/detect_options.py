"""How ``hoi detections run`` runs (:class:`DetectOptions`), declared once for the CLI and the stage.

Kept apart from :mod:`pipeline.detect_stage` so that the command line reads its defaults
without importing torch (``hoi --help`` stays instant).
"""

from __future__ import annotations

from dataclasses import dataclass

from hoidata.errors import InputError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DetectOptions:
    """How to run the detector. Everything but ``workers``, ``overwrite`` and ``progress`` is
    part of the run's identity (compared on resume)."""

    score_threshold: float = 0.05   # drop detections scoring below this
    nms_iou: float = 0.5            # class-wise NMS on top of the model's own; >= 1: none
    max_per_image: int = 100        # the best this many per image
    batch_size: int = 8             # images per model call
    chunk_size: int = 256           # images per saved chunk (the unit of resuming)
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    precision: str = "auto"         # auto (fp16 on CUDA, fp32 on the CPU) | fp32 | fp16 | bf16
    on_error: str = "fail"          # an unreadable image stops the run, or is recorded as skipped
    workers: int = 2                # decoding threads
    overwrite: bool = False         # start afresh instead of resuming or reusing
    progress: bool = True

    def __post_init__(self):
        if self.on_error not in ("fail", "skip"):
            raise InputError(f"on_error must be fail or skip, not {self.on_error!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        for name in ("max_per_image", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.nms_iou <= 0:
            raise InputError(f"nms_iou must be above 0 (1 turns our NMS off), not {self.nms_iou}")
