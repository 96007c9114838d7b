"""The region probe of scripts/probe_region_clip.py: CLIP restricted to a box's tokens."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tinyworld import MODEL, register_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_region_clip.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("probe_region_clip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def visual(tmp_path_factory):
    import open_clip

    register_model(tmp_path_factory.mktemp("model"))
    torch.manual_seed(0)
    return open_clip.create_model(MODEL).visual.eval()  # 32 px, 8 px patches: a 4 x 4 grid


def test_box_tokens_are_the_class_token_and_the_patches_inside(probe):
    keep = probe.box_tokens(torch.tensor([[0.0, 0.0, 2.0, 1.0]]), 4)  # columns 0-1 of row 0
    assert keep.tolist() == [[True, True, True] + [False] * 14]


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_box_over_the_whole_grid_is_clips_own_embedding(probe, visual, blocks):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        whole = F.normalize(visual(pixels), dim=-1)
        region = probe.region_embeddings(visual, pixels, torch.tensor([1, 0]), torch.tensor([[0.0, 0, 4, 4]] * 2),
                                         blocks)
    torch.testing.assert_close(region, whole[[1, 0]], atol=1e-5, rtol=1e-5)


def test_with_all_blocks_restricted_the_patches_outside_the_box_do_not_count(probe, visual):
    torch.manual_seed(2)
    pixels = torch.randn(1, 3, 32, 32)
    changed = pixels.clone()
    changed[..., 16:, :] = torch.randn(1, 3, 16, 32)  # the bottom two rows of patches
    box = torch.tensor([[0.0, 0, 4, 2]])               # the top two rows
    with torch.no_grad():
        a, b = (probe.region_embeddings(visual, x, torch.tensor([0]), box, 2) for x in (pixels, changed))
        c = probe.region_embeddings(visual, changed, torch.tensor([0]), box, 1)  # earlier block saw them
        d = probe.region_embeddings(visual, pixels, torch.tensor([0]), box, 1)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(c, d, atol=1e-4)
