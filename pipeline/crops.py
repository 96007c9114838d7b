"""Cutting union boxes (and whole images) out of decoded images, batched on the device.

One ``roi_align`` call per image cuts all its boxes at once, on the GPU when there is
one; no PIL crop per box. The image is normalised first, so samples that fall outside it
(``pad`` mode) read 0, which is the mean colour after normalisation.

Non-square boxes become square inputs by one of three recorded rules:

- ``squash``: the box is resized to a square, aspect ratio not kept;
- ``pad``: the box grows to a square around its centre (context outside the image is
  the mean colour);
- ``center``: the box shrinks to a square around its centre (the long side is cut).
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

CROP_MODES = ("squash", "pad", "center")


def square_boxes(boxes: torch.Tensor, mode: str) -> torch.Tensor:
    """float [M, 4] xyxy boxes made square by ``mode`` (unchanged for ``squash``)."""
    if mode == "squash":
        return boxes
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, not {mode!r}")
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h) if mode == "pad" else torch.minimum(w, h)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)


def with_margin(boxes, margin: float):
    """Grow [M, 4] boxes by ``margin`` times their width and height on each side."""
    if margin == 0:
        return boxes
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + torch.stack([-w, -h, w, h], dim=1) * margin


def normalise(image_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] -> float32 [3, H, W], (x / 255 - mean) / std; mean, std float32 [3, 1, 1]
    already on the image's device (building them here would be a blocking copy per image)."""
    return (image_u8.float() / 255.0 - mean) / std


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int, mode: str = "squash") -> torch.Tensor:
    """Crops of one normalised image.

    image: float32 [3, H, W]; boxes: float32 [M, 4] xyxy in continuous pixel coordinates.
    Returns float32 [M, 3, size, size]. Each output pixel averages a grid of bilinear
    samples inside its bin (``sampling_ratio`` adapts to the box size), which
    anti-aliases large boxes the way an area resize does.
    """
    if len(boxes) == 0:
        return image.new_zeros((0, 3, size, size))
    sq = square_boxes(boxes.float(), mode)
    rois = torch.cat([sq.new_zeros((len(sq), 1)), sq], dim=1)
    return roi_align(image[None], rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)


