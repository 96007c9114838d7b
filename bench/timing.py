"""Timing helpers shared by the benches."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ms_per_call(fn, device: torch.device, repeats: int = 1, warm: bool = True) -> float:
    """Mean milliseconds of ``fn()`` over ``repeats`` calls, after one untimed call when
    ``warm`` (kernels, allocator); the device's queue is drained before and after."""
    if warm:
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - start) / repeats
