"""Batch crops: cutting from a padded canvas equals cutting each normalised image alone."""

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from hoidata import boxes as B
from pipeline.images import pad_into_canvas
from pipeline.teacher.crops import crop_normalised

MEAN = torch.tensor([0.48, 0.46, 0.41]).view(1, 3, 1, 1)
STD = torch.tensor([0.27, 0.26, 0.28]).view(1, 3, 1, 1)
SIZES = [(37, 29), (64, 48), (50, 70)]  # (w, h): the canvas is 64 x 70


def images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in SIZES]


def alone(img: np.ndarray, regions: np.ndarray, size: int) -> torch.Tensor:
    """The definition: normalise the image by itself, then cut (outside reads 0, the mean)."""
    x = (torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255 - MEAN) / STD
    rois = torch.cat([torch.zeros(len(regions), 1), torch.from_numpy(regions).float()], 1)
    return roi_align(x, rois, (size, size), 1.0, -1, aligned=True)


def regions_for(rng, w, h, mode, margin, k=6):
    x1, y1 = rng.uniform(0, w - 4, k), rng.uniform(0, h - 4, k)
    b = np.stack([x1, y1, rng.uniform(x1 + 2, w), rng.uniform(y1 + 2, h)], 1)
    b[0] = (0, 0, w, h)  # a box on all four edges
    return B.crop_region(b, margin, mode)


@pytest.mark.parametrize("mode,margin", [("squash", 0.0), ("center", 0.0), ("pad", 0.0), ("squash", 0.3)])
def test_canvas_crops_equal_each_image_cut_alone(mode, margin):
    rng = np.random.default_rng(1)
    imgs = images()
    outside = mode == "pad" or margin > 0
    regions = [regions_for(rng, w, h, mode, margin) for w, h in SIZES]
    canvas = pad_into_canvas(imgs, inside_channel=outside).float()
    rois = torch.from_numpy(np.concatenate([np.c_[np.full(len(r), k), r] for k, r in enumerate(regions)])).float()
    got = crop_normalised(canvas, rois, 16, MEAN, STD)
    want = torch.cat([alone(im, r, 16) for im, r in zip(imgs, regions)])
    assert got.shape == want.shape == (18, 3, 16, 16)
    if not outside:
        # every sample lies on its image: identical up to float rounding
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    else:
        # the edge fades to the mean colour over one source pixel past the right and bottom
        # edges, where cutting alone stops dead: only border bins of the crops differ
        cos = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1))
        assert cos.min() > 0.95 and ((got - want).abs().amax(1) > 1e-4).float().mean() < 0.1
    # an image's crops do not depend on the images that share its canvas
    for k, (im, r) in enumerate(zip(imgs, regions)):
        single = crop_normalised(pad_into_canvas([im], inside_channel=outside).float(),
                                 torch.from_numpy(np.c_[np.zeros(len(r)), r]).float(), 16, MEAN, STD)
        torch.testing.assert_close(got[6 * k:6 * k + 6], single, atol=1e-4, rtol=0)


def test_canvas_repeats_the_edge_then_zeros():
    imgs = images()
    canvas = pad_into_canvas(imgs, inside_channel=True)
    assert canvas.shape == (3, 4, 74, 68) and canvas.dtype == torch.uint8
    small = canvas[0, :, 1:32, 1:40]  # the 37 x 29 image at (2, 2) and its repeated edge
    np.testing.assert_array_equal(small[:3, 1:30, 1:38].permute(1, 2, 0).numpy(), imgs[0])
    for edge, inner in ((small[:3, :, 0], small[:3, :, 1]), (small[:3, :, -1], small[:3, :, -2]),
                        (small[:3, 0], small[:3, 1]), (small[:3, -1], small[:3, -2])):
        assert torch.equal(edge, inner)
    assert small[3].eq(255).all() and canvas[0, 3].sum() == 255 * small[3].numel()
    assert canvas[0, :, 0].eq(0).all() and canvas[0, :, :, 0].eq(0).all() and canvas[0, :, 32:].eq(0).all()
