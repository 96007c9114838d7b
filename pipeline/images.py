"""Decoding images in worker threads, so decoding overlaps with the encoder.

Any PIL mode becomes RGB (grayscale, palette, CMYK; alpha is dropped). A missing or
corrupt file does not raise in the worker: the item carries the error, and the shard
decides (fail naming the file, or record it as skipped).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


@dataclass
class Decoded:
    index: int                      # image index in the split
    image: torch.Tensor | None      # uint8 [3, H, W], None when unreadable
    error: str | None = None


def decode(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of an image file."""
    with Image.open(path) as im:
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants


class ImageFolder(torch.utils.data.Dataset):
    """Images ``root / file_names[i]`` for the given indices; item k -> :class:`Decoded`."""

    def __init__(self, root, file_names, indices, sizes=None, pin: bool = False):
        self.root, self.file_names, self.indices = Path(root), file_names, list(indices)
        self.sizes, self.pin = sizes, pin

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Decoded:
        i = self.indices[k]
        path = self.root / self.file_names[i]
        try:
            arr = decode(path)
        except FileNotFoundError:
            return Decoded(i, None, f"{path}: file not found")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            return Decoded(i, None, f"{path}: cannot decode ({e})")
        if self.sizes is not None:
            w, h = (int(v) for v in self.sizes[i])
            if w > 0 and (arr.shape[1], arr.shape[0]) != (w, h):
                return Decoded(i, None, f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, the annotations say {w}x{h}")
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        # pinned pages let the upload run asynchronously, off the GPU's queue (worker
        # processes leave the pinning to the DataLoader)
        in_worker = torch.utils.data.get_worker_info() is not None
        return Decoded(i, t.pin_memory() if self.pin and not in_worker else t)


def _as_tuples(items: list[Decoded]) -> list[tuple]:
    return [(d.index, d.image, d.error) for d in items]


def prefetch(dataset: ImageFolder, batch_size: int, workers: int, ahead: int = 4, processes: bool = False):
    """Yield lists of :class:`Decoded` in dataset order, decoding up to ``ahead`` batches ahead.

    ``processes=False``: a thread pool, free to start for every shard; PIL releases the
    GIL while it decodes, but the rest of the Python work competes with the thread that
    feeds the GPU. ``processes=True``: DataLoader worker processes (decoded pixels come
    back through shared memory, pinned by the loader's own thread), which keeps the
    feeding thread free on a GPU machine with cores to spare.
    """
    if processes and workers > 0:
        dl = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=_as_tuples, pin_memory=dataset.pin, prefetch_factor=ahead)
        for batch in dl:
            yield [Decoded(i, img, err) for i, img, err in batch]
        return
    if workers <= 0:
        for a in range(0, len(dataset), batch_size):
            yield [dataset[k] for k in range(a, min(a + batch_size, len(dataset)))]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = deque()
        starts = iter(range(0, len(dataset), batch_size))
        def submit():
            a = next(starts, None)
            if a is not None:
                pending.append([pool.submit(dataset.__getitem__, k)
                                for k in range(a, min(a + batch_size, len(dataset)))])
        for _ in range(ahead):
            submit()
        while pending:
            batch = pending.popleft()
            submit()
            yield [f.result() for f in batch]
