"""What the cache buys: training from cached CLIP outputs vs recomputing them, and test-time cost.

:func:`bench_trainer` prints, measured in one run on one device:

(a) training pairs/s from a synthetic cache (one epoch of the real loop; the split is
    read from Zarr before the clock starts, as the trainer holds a split this small in
    memory) against the same loop fed by an encoder of CLIP's shape that recomputes, for
    every batch, the dense map and global scores of each image and the union scores of
    each pair (one encoder pass per image and per union crop, crops cut from the image
    tensor by roi_align). Its images are random tensors made inside the timed loop (a few
    percent of its time) and never decoded from files, so the ratio is a lower bound.
(b) inference cost per test image, over a batch of test images (throughput, not the
    latency of one image): the student (one encoder pass over each image, then its heads
    on all pairs) against the teacher (one encoder pass per pair).
(c) what labels cost (the supervised references, ``--supervision``): training pairs/s of
    the same epoch with image labels and with pair labels against CLIP's soft labels, and
    reading the split with its labels made (candidate pairs matched to the ground truth)
    against reading it without.

The encoder has random weights (only its cost matters): ViT-B/16's shape (224 px, 12
layers, width 768) on CUDA, a small stand-in on CPU unless asked otherwise.
"""

from __future__ import annotations

import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from bench.synthetic_cache import make_synthetic_cache
from bench.timing import ms_per_call
from cache.store import open_cache
from hoicore.device import resolve_device
from hoidata.labelspace import LabelSpace
from trainer.batch import Block
from trainer.cache_info import object_class_mask, resolve_crop_mode
from trainer.config import TrainConfig
from trainer.engine import autocast_for, build_model, make_optimizer, train_one_epoch
from trainer.loader import CacheReader, TrainData
from trainer.losses import DistillationLoss
from trainer.model import pair_scores

# name: (input px, patch, layers, width)
ENCODERS = {"vit-b-16": (224, 16, 12, 768), "small": (112, 16, 4, 256)}


class StandInCLIP(nn.Module):
    """A ViT image encoder with CLIP's structure: patches, class token, pre-norm transformer,
    projection into the joint space. images float [N, 3, S, S] -> (embedding [N, D],
    patch tokens [N, S/patch, S/patch, D])."""

    def __init__(self, image_size: int, patch: int, layers: int, width: int, embed_dim: int):
        super().__init__()
        self.image_size, self.side = image_size, image_size // patch
        self.patch = nn.Conv2d(3, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, self.side ** 2 + 1, width))
        block = nn.TransformerEncoderLayer(width, max(1, width // 64), 4 * width, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = self.blocks(torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos)
        tokens = self.proj(x[:, 1:]).view(len(x), self.side, self.side, -1)
        return F.normalize(self.proj(x[:, 0]), dim=-1), tokens


class OnlineTeacher:
    """Recomputes a block's CLIP outputs from images, as training without a cache must."""

    def __init__(self, encoder: StandInCLIP, text: torch.Tensor, grid: tuple[int, int], device: torch.device,
                 amp: bool, crop_batch: int = 256):
        self.encoder, self.text, self.grid, self.device, self.amp = encoder, text, grid, device, amp
        self.crop_batch = crop_batch

    def images(self, sizes: np.ndarray, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [torch.rand(3, int(h), int(w), generator=g).to(self.device) for w, h in sizes]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = []
        for s in range(0, len(images), self.crop_batch):
            with autocast_for(self.device, self.amp):
                outs.append(self.encoder(images[s:s + self.crop_batch]))
        return torch.cat([o[0] for o in outs]).float(), torch.cat([o[1] for o in outs]).float()

    def crops(self, image: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1).to(self.device)
        return roi_align(image[None], rois, self.encoder.image_size, aligned=True)

    def dense_and_global(self, imgs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder pass per image: dense map [n, H, W, D] (tokens resized to the cache's
        grid) and global embedding [n, D]."""
        size = self.encoder.image_size
        emb, tokens = self.encode(torch.stack([F.interpolate(im[None], (size, size), mode="bilinear")[0]
                                               for im in imgs]))
        dense = F.interpolate(tokens.permute(0, 3, 1, 2), self.grid, mode="bilinear").permute(0, 2, 3, 1)
        return dense, emb

    def union(self, imgs: list[torch.Tensor], block: Block) -> torch.Tensor:
        """One encoder pass per pair: union-crop embeddings [P, D]."""
        off = block.pair_offsets
        crops = [self.crops(im, block.boxes[off[i]:off[i + 1], 2]) for i, im in enumerate(imgs)]
        return self.encode(torch.cat(crops))[0]

    def __call__(self, block: Block) -> Block:
        imgs = self.images(block.size, int(block.image[0]))
        dense, emb = self.dense_and_global(imgs)
        union = self.union(imgs, block)
        half = lambda t: t.half().cpu().numpy()  # noqa: E731  (as the cache stores them)
        return Block(**{**block.__dict__, "dense": half(dense), "global_score": half(emb @ self.text.T),
                        "union_score": half(union @ self.text.T)})


def _epoch(config: TrainConfig, cache, batches, num_batches: int, device: torch.device, warmup) -> dict:
    """Metrics of one training pass over ``batches``, after one untimed step on ``warmup``
    (a one-batch iterable: CUDA context, kernels and allocator are then warm for both loops)."""
    model = build_model(config, cache, device)
    optimizer, criterion = make_optimizer(model, config), DistillationLoss(config)
    mask = torch.from_numpy(object_class_mask(cache)).to(device)
    common = dict(class_mask=mask, device=device, config=config, step=0)
    train_one_epoch(model, criterion, warmup, optimizer, lambda s: 1.0, epoch=0, num_batches=1, **common)
    metrics, _ = train_one_epoch(model, criterion, batches, optimizer, lambda s: 1.0, epoch=0,
                                 num_batches=num_batches, **common)
    return metrics


def bench_trainer(num_images: int = 256, pairs_per_image: int = 16, labelspace: str | None = "hico_det",
                  num_classes: int | None = None, embed_dim: int = 512, grid: tuple[int, int] = (14, 14),
                  batch_size: int = 32, encoder: str = "auto", online_batches: int = 2, inference_images: int = 32,
                  device: str = "auto", workdir=None, workers: int = 4, echo=print) -> dict:
    """Print (a) training pairs/s from the cache vs online recomputation and (b) inference
    ms per test image of the student vs the teacher (see the module docstring); return the numbers.

    labelspace: a built-in name or file for the synthetic cache's classes (HICO-DET's 600 by
    default), or None for ``num_classes`` synthetic ones. workdir: where the cache goes
    (default: a temporary folder, removed after).
    """
    dev = resolve_device(device)
    name = encoder if encoder != "auto" else ("vit-b-16" if dev.type == "cuda" else "small")
    px, patch, layers, width = ENCODERS[name]
    amp = dev.type == "cuda"
    ls = LabelSpace.load(labelspace) if labelspace else None
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        path = make_synthetic_cache(Path(tmp) / "bench", num_images=num_images, pairs_per_image=pairs_per_image,
                                    num_classes=num_classes if ls is None else None, embed_dim=embed_dim, grid=grid,
                                    labelspace=ls, workers=workers)
        made = time.perf_counter() - t0
        cache = open_cache(path)
        lay = cache.layout
        echo(f"trainer bench on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}): "
             f"{num_images:,} images, {lay.num_pairs:,} pairs, {lay.num_classes} classes, D={embed_dim}, "
             f"grid {grid[0]}x{grid[1]}; synthetic cache written in {made:.1f} s")
        config = TrainConfig(batch_size=batch_size, progress=False, device=str(dev), amp=amp)
        data = TrainData(cache, config, resolve_crop_mode("auto", cache))
        cached = _epoch(config, cache, data.epoch(0), len(data), dev, islice(data.epoch(1), 1))
        echo(f"  (a) training from the cache      {cached['pairs_per_s']:>12,.0f} pairs/s   (one epoch, "
             f"{cached['seconds']:.1f} s, {'in memory' if data.in_memory else 'streamed from Zarr'})")

        torch.manual_seed(0)
        clip = StandInCLIP(px, patch, layers, width, embed_dim).to(dev).eval()
        text = torch.from_numpy(cache.read("text/embedding")).to(dev)
        teacher = OnlineTeacher(clip, text, grid, dev, amp)
        online = _epoch(config, cache, (teacher(b) for b in islice(data.epoch(0), online_batches)),
                        online_batches, dev, (teacher(b) for b in islice(data.epoch(1), 1)))
        ratio = cached["pairs_per_s"] / online["pairs_per_s"]
        echo(f"      training, CLIP recomputed    {online['pairs_per_s']:>12,.0f} pairs/s   ({online_batches} "
             f"batches; encoder {name}: {px} px, patch {patch}, {layers} layers, width {width})")
        echo(f"      cache speed-up               {ratio:>12,.1f} x")

        # (b) a batch of test images: the student encodes each image once, the teacher each pair
        student = build_model(config, cache, dev).eval()
        first = next(iter(data.epoch(1)))
        test = first.select(np.arange(min(inference_images, len(first))))
        mask = torch.from_numpy(object_class_mask(cache)).to(dev)
        imgs = teacher.images(test.size, 0)

        def student_pass():
            with torch.no_grad():
                batch = test.to_batch(mask, dev)
                batch.dense, _ = teacher.dense_and_global(imgs)
                with autocast_for(dev, amp):
                    pair_scores(student(batch), batch.class_mask)

        ms_student = ms_per_call(student_pass, dev, repeats=3) / len(test)
        ms_teacher = ms_per_call(lambda: teacher.union(imgs, test), dev, repeats=3) / len(test)
        echo(f"  (b) inference per test image ({len(test)} images, {test.num_pairs / len(test):.0f} pairs each on "
             f"average): student {ms_student:,.2f} ms (one encoder pass + heads), teacher {ms_teacher:,.2f} ms "
             f"(one encoder pass per pair): {ms_teacher / ms_student:,.1f} x")
        labelled = _labels_cost(config, cache, data, cached, dev, echo)
    return {"device": str(dev), "encoder": name, "num_images": num_images, "num_pairs": lay.num_pairs,
            "cache_seconds": made, "cached_pairs_per_s": cached["pairs_per_s"], "cached_epoch_s": cached["seconds"],
            "online_pairs_per_s": online["pairs_per_s"], "speedup": ratio,
            "pairs_per_test_image": test.num_pairs / len(test),
            "student_ms_per_image": ms_student, "teacher_ms_per_image": ms_teacher, **labelled}


def _labels_cost(config: TrainConfig, cache, data: TrainData, cached: dict, dev: torch.device, echo) -> dict:
    """(c): one epoch per labelled mode against the annotation-free one (``cached``, its
    metrics), and the split read with and without its labels, in this run."""
    out = {}
    for mode in ("image-labels", "pair-labels"):
        cfg = config.replace(supervision=mode)
        labelled = TrainData(cache, cfg, data.reader.crop_mode)
        m = _epoch(cfg, cache, labelled.epoch(0), len(labelled), dev, islice(labelled.epoch(1), 1))
        out[f"{mode}_pairs_per_s"] = m["pairs_per_s"]
        echo(f"  (c) training on {mode:<12}     {m['pairs_per_s']:>12,.0f} pairs/s   "
             f"({m['pairs_per_s'] / cached['pairs_per_s']:.2f} x the annotation-free student's per step)")
    reader = data.reader
    plain = CacheReader(cache, reader.crop_mode, tuple(reader.what))
    with_labels = CacheReader(cache, reader.crop_mode, tuple(reader.what) + ("image_labels", "pair_labels"))
    t_plain = min(_seconds(lambda: plain.read_all(256)) for _ in range(3))
    t_labels = min(_seconds(lambda: with_labels.read_all(256)) for _ in range(3))
    out["label_read_ratio"] = t_labels / t_plain
    echo(f"      reading the split with its labels made: {t_labels:.2f} s, without: {t_plain:.2f} s "
         f"({t_labels / t_plain:.2f} x; {cache.layout.num_pairs:,} pairs matched to {cache.layout.num_gt:,} "
         "ground-truth pairs)")
    return out


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
