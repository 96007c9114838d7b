"""One reading of ``--device`` for every command that runs a model."""

from __future__ import annotations

import torch

from hoicore.errors import InputError

DEVICE_HELP = "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."


def resolve_device(setting: str) -> torch.device:
    """'auto': the first CUDA device when there is one, else the CPU. InputError for a typo,
    a device type other than cpu / cuda (nothing else is tested), or CUDA asked for without it."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"--device {setting!r} is not a device: use auto, cpu, cuda or cuda:N") from e
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {setting!r}: this project runs on cpu or cuda only")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {setting!r} was asked for but CUDA is not available; use --device auto or cpu")
    return device
