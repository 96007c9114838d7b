"""What CLIP itself knows of a union box from the whole-image pass (validation split only).

    python scripts/probe_region_clip.py --out runs/select [--seed 0] [--sizes 192 256] [--blocks 1 3 6]

A training-free probe of the information the student can read. For each whole-image size
and each k of ``--blocks``, the teacher's CLIP runs on the whole image (cut as the cache
cuts it) and its last k blocks run once per candidate pair with attention restricted to
the class token and the patch tokens whose centres lie in the pair's union box; the class
token, projected, is scored like the teacher (softmax of cosine / 0.01 over the object's
classes). k = 1 is what the cached map still allows (its tokens have seen the whole image
in every earlier block); k = all blocks is CLIP reading only the box's patches, at the
resolution the whole image gives them. Builds (or reuses) the world and the validation
cache of ``scripts/select_on_val.py`` under the same ``--out``, and prints Full, Rare
and each zero-shot split's mAP (%, Default).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEMPERATURE = 0.01  # the teacher baseline's


def box_tokens(union: torch.Tensor, grid: int) -> torch.Tensor:
    """bool [P, 1 + grid * grid]: the class token and the patch tokens (row-major) whose
    centres lie in each union box ``union`` float [P, 4] (x1, y1, x2, y2 in cells)."""
    centre = torch.arange(grid, dtype=torch.float32) + 0.5
    cy, cx = torch.meshgrid(centre, centre, indexing="ij")
    cx, cy = cx.reshape(1, -1), cy.reshape(1, -1)
    inside = (cx >= union[:, :1]) & (cx <= union[:, 2:3]) & (cy >= union[:, 1:2]) & (cy <= union[:, 3:4])
    return torch.cat([torch.ones(len(union), 1, dtype=torch.bool), inside], 1)


def region_embeddings(visual, pixels: torch.Tensor, pair_image: torch.Tensor, union: torch.Tensor,
                      blocks: int) -> torch.Tensor:
    """float32 [P, D] L2-normalised: ``visual`` (an open_clip ViT) on ``pixels`` float32 [B, 3,
    S, S], its last ``blocks`` blocks run per pair (images ``pair_image`` [P]) with attention
    among the tokens of :func:`box_tokens` only (each other token attends to itself)."""
    resblocks = visual.transformer.resblocks
    h = visual._embeds(pixels)
    for r in resblocks[:len(resblocks) - blocks]:
        h = r(h)
    grid = int(round((h.shape[1] - 1) ** 0.5))
    keep = box_tokens(union, grid)
    allow = (keep[:, None, :] & keep[:, :, None]) | torch.eye(h.shape[1], dtype=torch.bool)[None]
    mask = torch.zeros(allow.shape).masked_fill(~allow, float("-inf"))
    mask = mask.repeat_interleave(resblocks[-1].attn.num_heads, 0)  # [P * heads, L, L]
    hp = h[pair_image]
    for r in resblocks[len(resblocks) - blocks:]:
        hp = r(hp, attn_mask=mask)
    pooled, _ = visual._pool(hp)
    return F.normalize(pooled @ visual.proj, dim=-1)


def probe(cache_path, images_dir: Path, whole, blocks: int) -> dict:
    """The evaluator's summary of the probe through ``whole`` (the teacher's
    :class:`~pipeline.teacher.global_pass.GlobalPass` at some whole-image size) with its last
    ``blocks`` blocks restricted to each union box."""
    from cache.store import open_cache
    from hoidata.evaluation import evaluate
    from hoidata.predictions import Predictions
    from pipeline.images import decode
    from trainer.cache_info import labelspace_of, object_class_mask, resolve_crop_mode
    from trainer.loader import CacheReader
    from trainer.model import masked_softmax
    from trainer.predict import block_rows, concat_rows, ground_truth

    cache = open_cache(cache_path)
    ls = labelspace_of(cache)
    visual = whole.teacher.global_model.visual
    text = F.normalize(torch.from_numpy(cache.read("text/embedding").astype(np.float32)), dim=-1)
    names = [str(n) for n in cache.read("images/file_name")]
    reader = CacheReader(cache, resolve_crop_mode("auto", cache), ())
    mask = object_class_mask(cache)
    scale = whole.teacher.grid[0] / reader.grid[0]  # the cache's grid cells -> this size's
    parts = []
    with torch.no_grad():
        for i0, i1 in reader.blocks(64):
            b = reader.read(i0, i1)
            pixels = whole.whole_images([decode(images_dir / names[i]) for i in b.image])
            union = torch.from_numpy(b.grid_boxes[:, 2].astype(np.float32)) * scale
            emb = region_embeddings(visual, pixels, torch.from_numpy(b.pair_image.astype(np.int64)), union, blocks)
            scores = masked_softmax(emb @ text.T / TEMPERATURE, torch.from_numpy(mask[b.object]))
            parts.append(block_rows(b, scores.numpy(), mask))
    pred = Predictions.from_arrays(names, box_format="coord", **concat_rows(parts))
    return evaluate(ground_truth(cache, ls.name), pred, ls).summary()


def main(argv=None) -> None:
    from cache.store import open_cache
    from hoi.demo import cache_step, demo_paths, demo_teacher, world_step
    from hoi.logs import setup_logging
    from pipeline.teacher.global_pass import GlobalPass
    from trainer.cache_info import labelspace_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/select")
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--sizes", type=int, nargs="+", default=[192, 256], help="whole-image sizes (px)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 3, 6], help="last blocks restricted to the box")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging(0)
    p = demo_paths(args.out)
    w, ls = world_step(p, 2000, 600, 600, args.seed, print)
    cache_step(p, w, ls, ("val",), print)
    prompts = labelspace_of(open_cache(p["val_cache"])).prompts
    for size in args.sizes:
        whole = GlobalPass(replace(demo_teacher(), global_size=size), prompts, torch.device("cpu"))
        for blocks in args.blocks:
            s = probe(p["val_cache"], Path(w["images_val"]), whole, blocks)
            d, zs = s["default"], s.get("zero_shot", {}).get("default", {})
            print(f"{size} px, last {blocks} block(s) on the box: Full {100 * d['full']:.2f}, Rare "
                  f"{100 * d['rare']:.2f}; " + ", ".join(f"{k} {100 * v['unseen']:.2f}" for k, v in zs.items()),
                  flush=True)


if __name__ == "__main__":
    main()
