"""Cutting union boxes (and whole images) out of a batch of decoded images, on the device.

One ``roi_align`` call cuts every box of a batch from its padded canvas
(``pipeline.images``), on the GPU when there is one; no PIL crop per box. Each output
pixel averages a grid of bilinear samples inside its bin (``sampling_ratio`` adapts to
the box size), which anti-aliases large boxes the way an area resize does.

Which region is cut for a box (margin, and the rule that makes it square: squash, pad,
center) is ``hoidata.boxes.crop_region``, shared with the student. Normalisation comes
after the cut (the average of samples commutes with the affine normalisation); samples
outside the image read 0 after normalisation, i.e. the mean colour, exactly as cutting a
normalised image alone would give.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from pipeline.images import BORDER


def crop_normalised(pixels: torch.Tensor, rois: torch.Tensor, size: int, mean: torch.Tensor,
                    std: torch.Tensor) -> torch.Tensor:
    """Normalised crops of a batch canvas, each region resized to size x size.

    pixels: float32 [n, C, H, W] canvas of ``pipeline.images.pad_into_canvas`` with values
    0..255 (C = 3, or 4 where channel 3 is 255 on the image and 0 on padding); rois:
    float32 [K, 5] (canvas index, x1, y1, x2, y2) in the continuous pixel coordinates of
    each image, already made square by the crop rule; mean, std: float32 [1, 3, 1, 1] on
    the same device. Returns float32 [K, 3, size, size].
    """
    if len(rois) == 0:
        return pixels.new_zeros((0, 3, size, size))
    on_canvas = torch.cat([rois[:, :1], rois[:, 1:] + BORDER], 1)  # (no host tensor: that would be a copy)
    x = roi_align(pixels, on_canvas, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                  aligned=True)
    # share of each output pixel's samples on the image: 1 unless crops may leave it
    on_image = x[:, 3:] * (1 / 255) if x.shape[1] == 4 else 1.0
    return (x[:, :3] * (1 / 255) - mean * on_image) / std
