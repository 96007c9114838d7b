"""RoI-align as a matrix product: the same numbers as torchvision's ``roi_align``
(``aligned=True``, a fixed sampling ratio), a fraction of its cost on the CPU.

torchvision's CPU ``roi_align`` backward scatters every sample's gradient in a scalar loop;
on the student's small maps (8 x 8 to 24 x 24 cells) that loop was a third of a training
step. Each output bin of ``roi_align`` is a fixed weighted sum of map cells: the mean of its
samples' bilinear weights, which factor into a weight over rows times a weight over
columns. So the pooled features of every box are ``weights [K * bins, B * H * W] @ map
[B * H * W, F]`` for a map in channels-last layout, and the backward is one more product,
with the transpose.

A bin touches a handful of cells (about 6 to 16 of the map's H * W), so on the CPU the
weights are a sparse CSR matrix: the product costs what the nonzero weights cost, whatever
the number of boxes per image. Elsewhere (CUDA) a dense batched product over images (boxes
padded to the image with most boxes) is the faster kernel.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


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


def _csr_mm(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` written into a new tensor: ``torch.sparse.mm`` computes into zeros and
    copies the result out, two passes over the output that cost about as much as the product."""
    out = x.new_empty(matrix.shape[0], x.shape[1])
    return torch.addmm(out, matrix, x, beta=0, out=out)  # beta 0: out's contents are never read


class _CSRProduct(torch.autograd.Function):
    """``matrix @ x`` for a CSR matrix and a dense x, whose backward is one more CSR product
    with the transpose (built with the matrix), written straight into the gradient."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, transpose: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose
        return _csr_mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, _csr_mm(ctx.transpose, grad.contiguous())


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix of ``shape`` from entries sorted by row."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():  # torch calls its CSR support beta; the product is all this needs of it
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        # the indices are valid by construction: torch's invariant checks would only cost time
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def _sparse_operator(image: torch.Tensor, weights: torch.Tensor, num_images: int, with_mean: bool):
    """(matrix, transpose): the CSR matrix [K * bins (+ B), B * H*W] of each box's weights over
    its image's cells (and with_mean, B more rows: 1 / (H * W) on each cell of their image),
    and its transpose, for :class:`_CSRProduct`."""
    K, bins, HW = weights.shape
    k, b, cell = torch.nonzero(weights, as_tuple=True)  # row-major: rows come sorted
    rows, cols, values = k * bins + b, image[k] * HW + cell, weights[k, b, cell]
    if with_mean:
        every = torch.arange(num_images * HW, device=weights.device)
        rows = torch.cat([rows, K * bins + every // HW])
        cols, values = torch.cat([cols, every]), torch.cat([values, values.new_full((num_images * HW,), 1.0 / HW)])
    shape = (K * bins + (num_images if with_mean else 0), num_images * HW)
    order = torch.argsort(cols, stable=True)
    return _csr(rows, cols, values, shape), _csr(cols[order], rows[order], values[order], shape[::-1])


def _pool_dense(x: torch.Tensor, image: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[K, bins, F]: each box's weights over its image's cells applied to x [B, H*W, F], as one
    dense ``bmm`` over images (boxes padded to the image with most boxes)."""
    B, HW, F = x.shape
    K, bins, _ = weights.shape
    counts = torch.bincount(image, minlength=B)
    order = torch.argsort(image, stable=True)
    slot = torch.empty_like(image)
    slot[order] = torch.arange(K, device=x.device) - (torch.cumsum(counts, 0) - counts)[image[order]]
    padded = weights.new_zeros(B, int(counts.max()), bins, HW)
    padded[image, slot] = weights
    pooled = torch.bmm(padded.flatten(1, 2), x)                # [B, slots * bins, F]
    return pooled.view(B, -1, bins, F)[image, slot]


class RoIPool:
    """RoI-align at rois float [K, 5] (image index, x1, y1, x2, y2 in cells) on channels-last
    maps of one shape [B, H, W, F]: the weights (on the CPU, the sparse matrix and its
    transpose) are built once and serve every map pooled at the same boxes.

    coverage float [K, out * out]: each bin's total weight, 1 where all its samples fall on
    the map, less where some fall outside (what a constant map pools to). with_mean: calls
    also return each image's mean over the grid (rows of the same product). sparse: the CSR
    product (default on the CPU) or the dense batched one (default elsewhere)."""

    def __init__(self, rois: torch.Tensor, grid: tuple[int, int, int], out: int, sampling: int, *,
                 dtype: torch.dtype, sparse: bool | None = None, with_mean: bool = False):
        self.num_images, H, W = grid
        self.with_mean = with_mean
        self.weights = roi_weights(rois.to(dtype), H, W, out, sampling)     # [K, bins, H*W]
        self.coverage = self.weights.sum(2)
        self.image = rois[:, 0].long()
        self.sparse = rois.device.type == "cpu" if sparse is None else sparse
        self.operator = (_sparse_operator(self.image, self.weights, self.num_images, with_mean)
                         if self.sparse and len(rois) else None)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled float [K, out * out, F], bins row-major; with_mean: [B, F], else None) of x [B, H, W, F]."""
        B, H, W, F = x.shape
        K, bins, _ = self.weights.shape
        if K == 0:
            return x.new_zeros(0, bins, F), (x.mean((1, 2)) if self.with_mean else None)
        flat = x.reshape(B, H * W, F)
        if self.operator is None:
            return _pool_dense(flat, self.image, self.weights), (flat.mean(1) if self.with_mean else None)
        rows = _CSRProduct.apply(*self.operator, flat.reshape(B * H * W, F))
        return rows[:K * bins].view(K, bins, F), (rows[K * bins:] if self.with_mean else None)


def roi_pool(x: torch.Tensor, rois: torch.Tensor, out: int, sampling: int = 2, sparse: bool | None = None,
             with_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """RoI-align of one channels-last map x float [B, H, W, F] at rois float [K, 5]: (pooled
    float [K, out * out, F], coverage float [K, out * out], mean float [B, F] | None); see
    :class:`RoIPool`."""
    pool = RoIPool(rois, x.shape[:3], out, sampling, dtype=x.dtype, sparse=sparse, with_mean=with_mean)
    pooled, mean = pool(x)
    return pooled, pool.coverage, mean


def roi_align(x: torch.Tensor, rois: torch.Tensor, out: int, sampling: int = 2,
              sparse: bool | None = None) -> torch.Tensor:
    """float [K, F, out, out]: ``torchvision.ops.roi_align(x, rois, out, 1.0, sampling,
    aligned=True)`` for x float [B, F, H, W] and rois float [K, 5]."""
    pooled, _, _ = roi_pool(x.permute(0, 2, 3, 1), rois, out, sampling, sparse)
    return pooled.transpose(1, 2).reshape(len(rois), x.shape[1], out, out)


# -- what the student's branches read of one level's features ------------------------------
# RoI-align samples 2 x 2 points per bin (aligned=True: a box [0, W] covers exactly the W
# cells): a fixed ratio keeps the cost independent of box size and the result deterministic.
ROI_SAMPLING = 2


class AdaptedMap(NamedTuple):
    """The adapted map ``base + mix(context)`` (each [B, H, W, F], channels-last), kept as
    its two terms: ``mix`` is a pointwise affine map (a 1 x 1 convolution) or None (identity),
    ``context`` None where there is none. Linear pooling commutes with ``mix``, so each term
    is pooled first and ``mix`` applied to the few pooled rows."""

    base: torch.Tensor
    context: torch.Tensor | None
    mix: nn.Conv2d | None

    def _mixed(self, pooled: torch.Tensor, coverage: torch.Tensor | float) -> torch.Tensor:
        """mix of pooled context rows [..., F]: its bias enters with the pooling weights' total."""
        if self.mix is None:
            return pooled
        return F.linear(pooled, self.mix.weight[:, :, 0, 0]) + coverage * self.mix.bias

    def pool(self, rois: torch.Tensor, out: int, sampling: int,
             with_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(RoI-align of the map at rois [K, 5]: [K, out * out, F]; with_mean: the map's mean
        over the grid [B, F], else None). See :class:`trainer.roi.RoIPool`."""
        pool = RoIPool(rois, self.base.shape[:3], out, sampling, dtype=self.base.dtype, with_mean=with_mean)
        pooled, mean = pool(self.base)
        if self.context is None:
            return pooled, mean
        ctx, ctx_mean = pool(self.context)  # the same boxes: the same weights, built once
        pooled = pooled + self._mixed(ctx, pool.coverage[..., None])
        return pooled, (mean + self._mixed(ctx_mean, 1.0) if with_mean else None)

    def full(self) -> torch.Tensor:
        """[B, H, W, F]: the whole map (for checks; the branches never need it)."""
        return self.base if self.context is None else self.base + self._mixed(self.context, 1.0)


class DenseAdapter(nn.Module):
    """[B, H, W, D] cached tokens -> :class:`AdaptedMap` [B, H, W, F]: per-token norm and
    projection, then (``context``) a residual 3 x 3 convolution so that each cell sees its
    neighbours, full ('conv') or depthwise then pointwise ('depthwise'), or none ('none')."""

    def __init__(self, embed_dim: int, hidden: int, context: str = "conv"):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)  # token norms vary with the teacher; the student should not care
        self.proj = nn.Linear(embed_dim, hidden)
        if context == "conv":
            self.context = nn.Conv2d(hidden, hidden, 3, padding=1)
        elif context == "depthwise":
            self.context = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
                                         nn.Conv2d(hidden, hidden, 1))
        else:
            self.context = None

    def tokens(self, dense: torch.Tensor) -> torch.Tensor:
        """[B, H, W, F]: ``proj(norm(dense))``, with the norm's scale and shift folded into the
        projection. The same function; but the cached tokens need no gradient, so the backward
        skips the gradient of the norm's output (a product as large as the projection)."""
        weight = self.proj.weight * self.norm.weight                       # [F, D]
        bias = self.proj.bias + self.proj.weight @ self.norm.bias          # [F]
        return F.linear(F.layer_norm(dense, dense.shape[-1:], eps=self.norm.eps), weight, bias)

    def forward(self, dense: torch.Tensor) -> AdaptedMap:
        x = self.tokens(dense)                             # [B, H, W, F]
        if self.context is None:
            return AdaptedMap(x, None, None)
        spatial, mix = (self.context, None) if isinstance(self.context, nn.Conv2d) else self.context
        ctx = spatial(F.gelu(x).permute(0, 3, 1, 2))      # [B, F, H, W], channels-last in memory
        return AdaptedMap(x, ctx.permute(0, 2, 3, 1), mix)


class RoIFeatures(nn.Module):
    """Boxes RoI-aligned on an :class:`AdaptedMap` (roi_size x roi_size samples) to [K, F]
    features: the samples flattened channel-major and projected."""

    def __init__(self, hidden: int, roi_size: int):
        super().__init__()
        self.roi_size = roi_size
        self.proj = nn.Linear(hidden * roi_size * roi_size, hidden)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """[K, F] features of RoI-aligned boxes pooled [K, roi_size * roi_size, F]."""
        return F.gelu(self.proj(pooled.transpose(1, 2).flatten(1)))


def distinct_boxes(grid_boxes: torch.Tensor, pair_image: torch.Tensor,
                   cols: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rois float [K, 5]: image index and grid box of each distinct box of columns ``cols``
    of ``grid_boxes`` [P, 3, 4] (pairs of images ``pair_image`` int64 [P]); inverse int64
    [P * len(cols)]: each pair's box (pair-major) among them).

    A detection takes part in many pairs (every human with every object): each distinct box
    of an image is pooled once and its features handed to every pair that has it."""
    boxes = grid_boxes[:, cols]  # [P, k, 4]
    idx = pair_image[:, None, None].expand(-1, len(cols), 1).to(boxes.dtype)
    return torch.unique(torch.cat([idx, boxes], 2).reshape(-1, 5), dim=0, return_inverse=True)


def pool_boxes(adapter: DenseAdapter, proj: RoIFeatures | None, dense: torch.Tensor, grid_boxes: torch.Tensor,
               pair_image: torch.Tensor, cols: list[int], roi_size: int,
               with_mean: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """What the branches read of one level's features: ([P, F] for each box column of
    ``cols``: ``proj`` of the RoI-align of ``adapter(dense)`` over that box of every pair;
    with_mean: the adapted map's mean over the grid [B, F], else None).

    dense float [B, H, W, D]; grid_boxes float [P, 3, 4]; pair_image int64 [P]. The same
    numbers as :func:`pool_boxes_reference` up to rounding, at a fraction of its cost: the
    adapted map is never built whole (:class:`AdaptedMap` pools its terms), each distinct
    box of an image is pooled and projected once, and RoI-align is a matrix product
    (:class:`RoIPool`)."""
    rois, inverse = distinct_boxes(grid_boxes, pair_image, cols)
    pooled, mean = adapter(dense).pool(rois, roi_size, ROI_SAMPLING, with_mean=with_mean)
    if not cols:
        return [], mean
    feats = proj(pooled)[inverse].view(len(pair_image), len(cols), -1)
    return [feats[:, j] for j in range(len(cols))], mean


def pool_boxes_reference(adapter: DenseAdapter, proj: RoIFeatures | None, dense: torch.Tensor,
                         grid_boxes: torch.Tensor, pair_image: torch.Tensor, cols: list[int], roi_size: int,
                         with_mean: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """:func:`pool_boxes` as the diagram says it, for the tests: the whole adapted map, and
    every pair's box RoI-aligned on it by torchvision and projected."""
    from torchvision.ops import roi_align as tv_roi_align

    whole = adapter(dense).full().permute(0, 3, 1, 2)                       # [B, F, H, W]
    feats = []
    for c in cols:
        rois = torch.cat([pair_image[:, None].to(whole.dtype), grid_boxes[:, c].to(whole.dtype)], 1)
        pooled = tv_roi_align(whole, rois, roi_size, 1.0, ROI_SAMPLING, aligned=True)   # [P, F, s, s]
        feats.append(proj(pooled.flatten(2).transpose(1, 2)))
    return feats, (whole.mean((2, 3)) if with_mean else None)
