"""Cutting union boxes (and whole images) out of decoded images, batched on the device.

One ``roi_align`` call per image cuts all its boxes at once, on the GPU when there is
one; no PIL crop per box. The image is normalised first, so samples that fall outside it
(``pad`` mode) read 0, which is the mean colour after normalisation.

Which region is cut for a box (margin, and the rule that makes it square: squash, pad,
center) is ``hoidata.boxes.crop_region``, shared with the student. In ``pad`` mode the
context outside the image is the mean colour.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

def normalise(image_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] -> float32 [3, H, W], (x / 255 - mean) / std; mean, std float32 [3, 1, 1]
    already on the image's device (building them here would be a blocking copy per image)."""
    return (image_u8.float() / 255.0 - mean) / std


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of one normalised image, each box resized to size x size.

    image: float32 [3, H, W]; boxes: float32 [M, 4] xyxy in continuous pixel coordinates,
    already made square by the crop rule (``hoidata.boxes.crop_region``).
    Returns float32 [M, 3, size, size]. Each output pixel averages a grid of bilinear
    samples inside its bin (``sampling_ratio`` adapts to the box size), which
    anti-aliases large boxes the way an area resize does.
    """
    if len(boxes) == 0:
        return image.new_zeros((0, 3, size, size))
    rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes.float()], dim=1)
    return roi_align(image[None], rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                     aligned=True)


