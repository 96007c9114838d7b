"""Decoding images in DataLoader workers, so decoding overlaps with the encoder.

Any PIL mode becomes RGB (grayscale, palette, CMYK; alpha is dropped). A missing or
corrupt file does not raise in the worker: the item carries the error, and the shard
decides (fail naming the file, or record it as skipped).
"""

from __future__ import annotations

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

    def __init__(self, root, file_names, indices, sizes=None):
        self.root, self.file_names, self.indices = Path(root), file_names, list(indices)
        self.sizes = sizes

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
        return Decoded(i, torch.from_numpy(arr).permute(2, 0, 1).contiguous())


def collate(items: list[Decoded]) -> list[Decoded]:
    return items


def loader(dataset: ImageFolder, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """Batches of decoded images in dataset order (workers decode ahead of the encoder)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=collate, pin_memory=False,
                                       prefetch_factor=4 if workers else None,
                                       persistent_workers=False)
