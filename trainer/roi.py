"""RoI-align as one batched matrix product: the same numbers as torchvision's ``roi_align``
(``aligned=True``, a fixed sampling ratio), a fraction of its cost on the CPU.

torchvision's CPU ``roi_align`` backward scatters every sample's gradient in a scalar loop;
on the student's small maps (8 x 8 to 24 x 24 cells) that loop was a third of a training
step. Each output bin of ``roi_align`` is a fixed weighted sum of map cells: the mean of its
samples' bilinear weights, which factor into a weight over rows times a weight over
columns. So a box's pooled features are ``weights [bins, H*W] @ map [H*W, F]``, and every
box of an image shares that image's map: one ``bmm`` over images (boxes padded to the
image with most boxes) does the forward, and its backward is two more ``bmm``s.
"""

from __future__ import annotations

import torch


def _axis_weights(start: torch.Tensor, length: torch.Tensor, size: int, bins: int, sampling: int) -> torch.Tensor:
    """float [K, bins, size]: along one axis, the mean bilinear weight of each cell for the
    ``sampling`` samples of each of a box's ``bins`` bins, as ``roi_align`` computes it.

    start, length: float [K], the box's first coordinate and extent (already shifted by
    -0.5, ``aligned=True``). A sample more than one cell outside the map counts as 0; one
    within clamps to the edge cell (``roi_align``'s rules)."""
    bin_len = length / bins
    offset = (torch.arange(bins, dtype=start.dtype, device=start.device)[:, None]
              + (torch.arange(sampling, dtype=start.dtype, device=start.device) + 0.5) / sampling)  # [bins, s]
    pos = start[:, None, None] + offset * bin_len[:, None, None]                                     # [K, bins, s]
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    at_end = low >= size - 1
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low)
    high = torch.where(at_end, low, low + 1)
    cells = torch.arange(size, dtype=start.dtype, device=start.device)
    w = (cells == low[..., None]) * (1 - frac)[..., None] + (cells == high[..., None]) * frac[..., None]
    return (w * valid[..., None]).mean(2)


def roi_weights(rois: torch.Tensor, height: int, width: int, out: int, sampling: int) -> torch.Tensor:
    """float [K, out * out, height * width]: each bin's weights over the map's cells, for
    rois [K, 5] (image index, x1, y1, x2, y2 in cells; bins row-major)."""
    x1, y1, x2, y2 = (rois[:, k] - 0.5 for k in range(1, 5))
    wy = _axis_weights(y1, y2 - y1, height, out, sampling)        # [K, out, H]
    wx = _axis_weights(x1, x2 - x1, width, out, sampling)         # [K, out, W]
    return (wy[:, :, None, :, None] * wx[:, None, :, None, :]).reshape(len(rois), out * out, height * width)


def roi_align_bmm(x: torch.Tensor, rois: torch.Tensor, out: int, sampling: int = 2) -> torch.Tensor:
    """float [K, F, out, out]: ``roi_align(x, rois, out, 1.0, sampling, aligned=True)`` for
    x float [B, F, H, W] and rois float [K, 5] (image index, x1, y1, x2, y2 in cells)."""
    B, F, H, W = x.shape
    K = rois.shape[0]
    if K == 0:
        return x.new_zeros(0, F, out, out)
    weights = roi_weights(rois.to(x.dtype), H, W, out, sampling)
    image = rois[:, 0].long()
    counts = torch.bincount(image, minlength=B)
    order = torch.argsort(image, stable=True)
    slot = torch.empty_like(image)
    slot[order] = torch.arange(K, device=x.device) - (torch.cumsum(counts, 0) - counts)[image[order]]
    padded = weights.new_zeros(B, int(counts.max()), out * out, H * W)
    padded[image, slot] = weights
    pooled = torch.bmm(padded.flatten(1, 2), x.flatten(2).transpose(1, 2))   # [B, slots * bins, F]
    pooled = pooled.view(B, -1, out * out, F)[image, slot]                    # [K, bins, F]
    return pooled.transpose(1, 2).reshape(K, F, out, out)
