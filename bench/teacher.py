"""Teacher-cache throughput against the bare encoder and a naive per-box loop, on the same
synthetic images (``make bench``; on a GPU machine too).

- bare encoder: the same number of global inputs and union crops, already on the
  device, through the image encoder in the same batch sizes and precision;
- teacher-cache: the real pipeline (decode in workers, crops on the device, writes);
- naive loop: PIL crop + open_clip preprocess + one box at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.timing import sync
from hoicore.device import resolve_device
from hoidata.detections import Detections, load_detections, save_detections
from hoidata.labelspace import hico_det
from hoidata.pairs import PairRule, make_pairs
from pipeline.teacher.clip import load_teacher
from pipeline.teacher.options import RunOptions, TeacherOptions
from pipeline.teacher.resources import ShardResources
from pipeline.teacher.run import build_teacher_cache
from pipeline.teacher.shard import helper_modes

log = logging.getLogger(__name__)

# A small ViT for CPU runs (registered on demand); GPU runs use open_clip's ViT-B-16.
TINY_CONFIG = {"embed_dim": 256, "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 16,
                                                "head_width": 64},
               "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 2}}


def make_images(folder: Path, n: int, humans: int, objects: int, seed: int = 0, size=(640, 480),
                vary_size: bool = False) -> Path:
    """n JPEG scenes and their detections (HICO-DET labels), each ``size`` (w, h) or, with
    ``vary_size``, of a size drawn between half and 1.25 times it, as photos vary. Returns
    the detections file."""
    rng = np.random.default_rng(seed)
    ls = hico_det()
    folder.mkdir(parents=True, exist_ok=True)
    names, boxes, scores, labels, sizes = [], [], [], [], []
    for i in range(n):
        w, h = (rng.uniform(0.5, 1.25, 2) * size).astype(int) if vary_size else size
        sizes.append((w, h))
        im = Image.new("RGB", (int(w), int(h)), tuple(int(c) for c in rng.integers(0, 255, 3)))
        d = ImageDraw.Draw(im)
        k = humans + objects
        x1 = rng.uniform(0, w * 0.7, k)
        y1 = rng.uniform(0, h * 0.7, k)
        b = np.stack([x1, y1, x1 + rng.uniform(40, w * 0.3, k), y1 + rng.uniform(40, h * 0.3, k)], 1)
        for bb in b:
            d.rectangle(bb.tolist(), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        name = f"bench_{i:05d}.jpg"
        im.save(folder / name, quality=90)
        names.append(name)
        boxes.append(b)
        scores.append(rng.uniform(0.5, 1.0, k))
        labels.append(np.r_[np.full(humans, ls.human), rng.choice([o for o in range(80) if o != ls.human], objects)])
    dets = Detections(file_names=names, sizes=np.array(sizes, dtype=np.int64).reshape(-1, 2),
                      offsets=np.arange(n + 1) * (humans + objects),
                      boxes=np.concatenate(boxes).astype(np.float32), scores=np.concatenate(scores).astype(np.float32),
                      labels=np.concatenate(labels),
                      attrs={"detector": "synthetic", "labelspace": ls.name, "labelspace_fingerprint": ls.fingerprint})
    path = folder.parent / "dets.h5"
    save_detections(dets, path)
    return path


def _bare(teacher, num_images: int, num_crops: int, batch_size: int, crop_batch: int, device) -> float:
    """Seconds for the pipeline's own encoder passes (same batch shapes and precision) over
    num_images global inputs and num_crops crops already on the device."""
    from pipeline.teacher.encoder import Encoder

    text = torch.nn.functional.normalize(torch.randn(600, teacher.model.visual.proj.shape[1], device=device), dim=1)
    enc = Encoder(teacher, text, device)
    g = torch.randn(batch_size, 3, teacher.global_size, teacher.global_size, device=device)
    c = torch.randn(crop_batch, 3, teacher.image_size, teacher.image_size, device=device)
    with enc.session():
        enc.global_pass(g), enc.union_pass(c)  # warm-up
        sync(device)
        t = time.perf_counter()
        for a in range(0, num_images, batch_size):
            enc.global_pass(g[: min(batch_size, num_images - a)])
        for a in range(0, num_crops, crop_batch):
            enc.union_pass(c[: min(crop_batch, num_crops - a)])
        sync(device)
    return time.perf_counter() - t


def _naive(teacher, images: Path, dets: Detections, pairs: tuple, num_images: int, device) -> tuple[int, float]:
    """(crops, seconds) of the naive loop over the first num_images images; ``pairs`` is
    make_pairs' (human rows, object rows, offsets) for ``dets``."""
    import open_clip

    hum, obj, offs = pairs
    pre = open_clip.image_transform(teacher.image_size, is_train=False, mean=teacher.mean, std=teacher.std)
    # the pipeline's precision (bf16 autocast on CUDA), so the ratio measures the feeding alone
    precision = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with torch.no_grad(), precision:
        first = Image.open(images / dets.file_names[0]).convert("RGB")
        teacher.model.encode_image(pre(first)[None].to(device))  # warm-up
        sync(device)
        crops, t = 0, time.perf_counter()
        for i in range(num_images):
            im = Image.open(images / dets.file_names[i]).convert("RGB")
            teacher.model.encode_image(pre(im)[None].to(device))
            for p in range(offs[i], offs[i + 1]):
                a, b = dets.boxes[hum[p]], dets.boxes[obj[p]]
                u = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                teacher.model.encode_image(pre(im.crop(u))[None].to(device))
                crops += 1
    sync(device)
    return crops, time.perf_counter() - t


@contextmanager
def _store_fsyncs(wrap):
    """The store's fsyncs (this process's shards and finalize) replaced by ``wrap(fsync)``
    for the block. Never used outside the bench."""
    from cache import store as cstore

    saved = cstore.fsync_file, cstore.fsync_dir
    cstore.fsync_file, cstore.fsync_dir = wrap(saved[0]), wrap(saved[1])
    try:
        yield
    finally:
        cstore.fsync_file, cstore.fsync_dir = saved


def _skipped(fsync):
    return lambda path: None


def _timed(spent: list):
    """A ``wrap`` for :func:`_store_fsyncs` adding each call's seconds to ``spent[0]``."""
    def wrap(fsync):
        def call(path):
            t0 = time.perf_counter()
            try:
                return fsync(path)
            finally:
                spent[0] += time.perf_counter() - t0
        return call
    return wrap


def parse_run_overrides(items: list[str]) -> dict:
    """``["workers=8", "decode=threads"]`` -> RunOptions fields with their types."""
    types = {f.name: type(f.default) for f in dataclasses.fields(RunOptions)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.replace("-", "_")
        if key not in types or not _:
            raise ValueError(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(types)}")
        out[key] = value.lower() in ("1", "true", "yes") if types[key] is bool else \
            types[key](value) if types[key] in (int, float) else value
    return out


def bench_teacher(model: str | None = None, num_images: int = 64, humans: int = 2, objects: int = 3,
                  naive_images: int = 8, run: dict | None = None, variants: tuple[dict, ...] = (), echo=print) -> dict:
    """Run the three contenders and print them. ``run``: RunOptions fields for the pipeline
    (default: 8 workers, 32 images and 256 crops a batch, 256 images a shard); each of
    ``variants`` (fields changed from ``run``) is one more pipeline run on the same images."""
    base = {"workers": 8, "images_per_shard": 256, **(run or {}), "progress": False}
    opts = RunOptions(**base)
    batch_size, crop_batch, workers, device = opts.batch_size, opts.crop_batch, opts.workers, opts.device
    dev = resolve_device(device)
    if model is None:
        model = "ViT-B-16" if dev.type == "cuda" else "hoi-bench-tiny"
    tmp = Path(tempfile.mkdtemp(prefix="hoi-bench-"))
    stack = contextlib.ExitStack()  # the resources below, closed before the folder goes
    try:
        if model == "hoi-bench-tiny":
            import json

            import open_clip
            cfg = tmp / "hoi-bench-tiny.json"
            cfg.write_text(json.dumps(TINY_CONFIG))
            open_clip.add_model_config(cfg)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        dets = make_images(tmp / "images", num_images, humans, objects)
        echo(f"teacher-cache bench: {num_images} images 640x480, {humans} humans + {objects} objects each, "
             f"model {model} on {dev} (made images in {time.perf_counter() - t0:.1f} s)")
        # the checkpoint makes every process load the same weights
        ck = tmp / "weights.pt"
        torch.save(load_teacher(model, None, device="cpu").model.state_dict(), ck)

        # one set of resources for every run: the warm-up's model, decoder and writer processes serve the rest
        resources = stack.enter_context(ShardResources())

        def pipeline(name: str, options: RunOptions) -> dict:
            from cache.store import open_cache
            build_teacher_cache(tmp / name, images=tmp / "images", detections=dets, labelspace=hico_det(),
                                teacher=TeacherOptions(model=model, pretrained=str(ck)), run=options,
                                resources=resources)
            return open_cache(tmp / name).attrs["last_run"]

        # The baselines first, while no pipeline thread or process has run in this process
        # (measured: a naive loop timed after the pipeline ran ~35% slower on the CPU).
        teacher = load_teacher(model, str(ck), device=dev)
        d = load_detections(dets)
        pairs = make_pairs(d.scores, d.labels, d.offsets, hico_det().human, PairRule())
        num_crops = int(pairs[2][-1])
        naive_crops, t_naive = _naive(teacher, tmp / "images", d, pairs, min(naive_images, num_images), dev)
        t_bare = _bare(teacher, num_images, num_crops, batch_size, crop_batch, dev)
        del teacher
        # Every configuration runs once before it is timed: the first run loads the model and,
        # where used, starts the worker and writer processes that serve the later runs.
        warmed = {helper_modes(opts, dev)}
        cold = pipeline("cold.zarr", opts)
        run = pipeline("cache.zarr", opts)
        assert (run["images"], run["crops"]) == (num_images, num_crops), "the baselines encoded other work"
        with _store_fsyncs(_skipped):  # durability's cost: the same run with the commit points' fsyncs skipped
            unsynced = pipeline("unsynced.zarr", opts)
        synced_s = [0.0]
        with _store_fsyncs(_timed(synced_s)):  # and what the fsyncs themselves took in a synced run
            again = pipeline("cache-again.zarr", opts)
        others = []
        for i, v in enumerate(variants):
            v_opts = RunOptions(**{**base, **v})
            if helper_modes(v_opts, dev) not in warmed:
                warmed.add(helper_modes(v_opts, dev))
                pipeline(f"variant{i}-cold.zarr", v_opts)
            others.append((v, pipeline(f"variant{i}.zarr", v_opts)))
        ours = run["crops"] / run["shards_wall_s"]
        bare = run["crops"] / t_bare
        naive = naive_crops / t_naive
        res = {"crops": run["crops"], "images": run["images"], "pipeline_crops_per_s": ours,
               "bare_crops_per_s": bare, "naive_crops_per_s": naive, "ratio_to_bare": ours / bare,
               "ratio_to_naive": ours / naive, "encoder_share": run["encoder_share"],
               "data_wait_share": run["data_wait_share"], "images_per_s": run["images"] / run["shards_wall_s"]}
        echo(f"  bare encoder      {bare:10.0f} crops/s (global inputs included, tensors already on {dev}, "
             "same batches and precision)")
        echo(f"  teacher-cache     {ours:10.0f} crops/s, {res['images_per_s']:.1f} images/s "
             f"(encoder busy {100 * run['encoder_share']:.0f}%, waiting for data {100 * run['data_wait_share']:.0f}%; "
             f"decoding in {workers} {run['decode']}, writing from a {run['writer']})")
        echo(f"                    shard time: queuing crops {100 * run['launch_share']:.0f}%, copying results back "
             f"{100 * run['collect_share']:.0f}%, final writes {100 * run['write_wait_share']:.0f}%")
        echo(f"    first run (warm-up{', starting the worker processes' if cold['decode'] == 'processes' else ''}, "
             f"not compared): {cold['crops'] / cold['shards_wall_s']:.0f} crops/s")
        for v, r in others:
            rate = r["crops"] / r["shards_wall_s"]
            res.setdefault("variants", []).append({**v, "pipeline_crops_per_s": rate, "ratio_to_bare": rate / bare})
            echo(f"    with {' '.join(f'{k}={x}' for k, x in v.items())}: {rate:.0f} crops/s, {rate / bare:.2f} of "
                 f"the bare encoder (encoder busy {100 * r['encoder_share']:.0f}%, waiting for data "
                 f"{100 * r['data_wait_share']:.0f}%, queuing {100 * r['launch_share']:.0f}%, final writes "
                 f"{100 * r['write_wait_share']:.0f}%; decoding in {r['decode']}, writing from a {r['writer']})")
        synced = max(r["crops"] / r["shards_wall_s"] for r in (run, again))
        res["durability_ratio"] = synced / (unsynced["crops"] / unsynced["shards_wall_s"])
        res["fsync_share"] = synced_s[0] / again["shards_wall_s"]
        echo(f"    durable shards (chunks fsynced before each done flag) / without the fsyncs: "
             f"{res['durability_ratio']:.3f} (best of two synced runs against one unsynced; goal >= 0.95); "
             f"the fsyncs took {1000 * synced_s[0]:.1f} ms, {100 * res['fsync_share']:.2f}% of the shards' time")
        echo(f"  naive loop        {naive:10.0f} crops/s (PIL crop + open_clip preprocess, one box at a time)")
        echo(f"  teacher-cache / bare encoder  {ours / bare:6.2f}   (goal >= 0.85)")
        echo(f"  teacher-cache / naive loop    {ours / naive:6.1f} x (goal >= 5)")
        return res
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
