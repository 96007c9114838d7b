"""The training loop: one plain ``train_one_epoch`` and :func:`train` around it.

A run folder ``OUT`` holds ``metrics.jsonl`` (one JSON line per epoch) and ``checkpoint/``
(see :mod:`trainer.checkpoint`), rewritten after every epoch. The data order, the learning
rate and the weights' initialisation depend on the seed, the epoch and the step only, so
``--resume`` from the checkpoint of epoch k ends with the weights an uninterrupted run has.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from cache.store import TeacherCache, open_cache
from hoicore.device import resolve_device
from hoicore.errors import HoiError
from hoicore.files import atomic_write
from hoicore.lock import exclusive
from hoicore.memory import HEAP_TUNABLES, heap_tunables_set

from . import checkpoint as ckpt
from .batch import Block
from .cache_info import object_class_mask, refuse_test_split, require_ground_truth, resolve_crop_mode, seen_classes
from .config import LABELLED, ConfigError, TrainConfig, runtime_fields
from .loader import TrainData
from .losses import DistillationLoss
from .model import Student

log = logging.getLogger(__name__)

METRICS_FILE, CHECKPOINT_DIR = "metrics.jsonl", "checkpoint"
SUPERVISION_WORDS = {"clip": "CLIP's scores, no annotation", "image-labels": "image-level HOI labels",
                     "pair-labels": "HOI labels of the candidate pairs"}


class NonFiniteLossError(HoiError, RuntimeError):
    """Training produced a NaN or infinite loss; the message says where and what to try."""


def build_model(config: TrainConfig, cache: TeacherCache, device: torch.device) -> Student:
    """A freshly initialised student (weights from ``config.seed``) scoring the cache's text embeddings."""
    torch.manual_seed(config.seed)
    return Student(config, torch.from_numpy(cache.read("text/embedding"))).to(device)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms and logit scales (tensors of fewer than 2 dims) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr)


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine from 1 to ``min_lr_ratio``."""
    warm = int(config.warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast_for(device: torch.device, amp: bool):
    """bfloat16 autocast on CUDA when asked (no loss scaling needed); full precision elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: Student, criterion: DistillationLoss, batches: Iterable[Block],
                    optimizer: torch.optim.Optimizer, schedule: Callable[[int], float], *, class_mask: torch.Tensor,
                    device: torch.device, epoch: int, step: int, config: TrainConfig,
                    num_batches: int | None = None) -> tuple[dict, int]:
    """One pass over ``batches``; returns (epoch metrics, global step after it).

    class_mask: bool [O, C] on ``device``. Raises :class:`NonFiniteLossError` on a NaN/inf loss.
    """
    model.train()
    sums: dict[str, float] = {}
    images = pairs = seen = 0
    start = time.perf_counter()
    bar = tqdm(batches, total=num_batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
               disable=not config.progress, leave=False, dynamic_ncols=True)
    for block in bar:
        batch = block.to_batch(class_mask, device)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * schedule(step)
        with autocast_for(device, config.amp):
            embeddings = model.embed(batch)
            outputs = model.logits(embeddings)
        losses = criterion(outputs, batch, embeddings, model.none_logits())
        loss = criterion.total(losses)
        value = loss.item()  # one sync per step; it also feeds the progress bar
        if not math.isfinite(value):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(
                f"the loss became {value} at epoch {epoch + 1}, step {step} ({parts}). Nothing of this epoch "
                "was saved (a checkpoint, if any, is that of the last finished epoch). Run `hoi cache verify` "
                "on the cache: non-finite or damaged arrays are the usual cause; if it is clean, try a lower "
                f"--lr (now {config.lr:g}), keep --clip-grad on, or --no-amp.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        step += 1
        seen += 1
        images += batch.num_images
        pairs += batch.num_pairs
        for k, v in (("loss", value), *((f"loss_{k}", v.item()) for k, v in losses.items())):
            sums[k] = sums.get(k, 0.0) + v
        rate = pairs / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(loss=f"{value:.4f}", pairs_s=f"{rate:,.0f}", refresh=False)
    seconds = time.perf_counter() - start
    per_s = 1 / max(seconds, 1e-9)
    metrics = {"epoch": epoch + 1, "step": step, **{k: v / max(seen, 1) for k, v in sums.items()},
               "lr": optimizer.param_groups[0]["lr"], "images": images, "pairs": pairs, "seconds": round(seconds, 3),
               "pairs_per_s": round(pairs * per_s, 1), "images_per_s": round(images * per_s, 1)}
    return metrics, step


def _resumed_config(meta: dict, config: TrainConfig | None, overrides: dict) -> TrainConfig:
    """The checkpoint's config with ``overrides``; only runtime fields and a larger ``epochs`` may change."""
    stored = TrainConfig.from_dict(meta["config"])
    wanted = (config or stored).replace(**overrides)
    changed = [k for k, v in wanted.to_dict().items()
               if v != getattr(stored, k) and k not in runtime_fields() and k != "epochs"]
    if changed:
        pairs = ", ".join(f"{k}: {getattr(stored, k)!r} -> {getattr(wanted, k)!r}" for k in changed)
        raise ConfigError(f"a resumed run keeps its configuration, but these fields differ from the checkpoint's: "
                          f"{pairs}. Drop them, or start a new run (another --output)")
    if wanted.epochs < meta["epoch"]:
        raise ConfigError(f"the checkpoint has already trained {meta['epoch']} epochs; --epochs {wanted.epochs} "
                          "is fewer")
    return wanted


def _rewrite_metrics(path: Path, epochs: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to epoch ``epochs`` (the checkpoint's, which is
    the truth): a run killed between its metrics line and its checkpoint wrote one too many,
    and one killed mid-line (or on a full disk) left a torn last line. Rewritten atomically,
    so a kill now loses nothing; a damaged line before the last is refused by number."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = []
    for k, line in enumerate(lines):
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            if k == len(lines) - 1:
                log.warning("%s: dropped a torn last line (a run stopped while writing it)", path)
                break
            raise ConfigError(f"{path}: line {k + 1} is not an epoch's metrics (damaged); fix or delete that "
                              "line (the checkpoint does not need it) and resume") from None
        if epoch <= epochs:
            kept.append(line + "\n")
    with atomic_write(path) as tmp:
        tmp.write_text("".join(kept))


def train_or_reuse(cache_path, out_dir, config: TrainConfig) -> str:
    """Train ``config`` into ``out_dir`` unless a finished run of exactly it (same cache, same
    settings, same epochs) is there; resume an unfinished one. Returns the checkpoint folder.

    A run there with other settings or another cache is refused, naming what differs, so
    results are never reported for a configuration that was not trained."""
    ckpt_dir = Path(out_dir) / CHECKPOINT_DIR
    with exclusive(out_dir, what="training"):
        ckpt.recover(ckpt_dir)
        if not (ckpt_dir / ckpt.META_FILE).exists():
            return _train(cache_path, out_dir, config)["checkpoint"]
        meta = ckpt.read_meta(ckpt_dir)
        ckpt.check_same_cache(meta, open_cache(cache_path), ckpt_dir)
        _resumed_config(meta, config, {})  # raises when a setting differs or fewer epochs are asked
        if meta["epoch"] == config.epochs:
            log.info("%s: a finished run of this configuration; reusing it", ckpt_dir)
            return str(ckpt_dir)
        return _train(cache_path, out_dir, config, resume=True)["checkpoint"]


def train(cache_path, out_dir, config: TrainConfig | None = None, *, resume: bool = False, **overrides) -> dict:
    """Train a student on the cache at ``cache_path`` into ``out_dir``; return the last epoch's metrics.

    config: the run's configuration (default: :class:`TrainConfig` defaults; when resuming,
    the checkpoint's). overrides: field values applied on top (what the command line gave).
    resume: continue from ``out_dir/checkpoint``, on the same cache only. One run at a time
    holds ``out_dir`` (a lock beside it, naming its holder).
    """
    with exclusive(out_dir, what="training"):
        return _train(cache_path, out_dir, config, resume=resume, **overrides)


def _train(cache_path, out_dir, config: TrainConfig | None = None, *, resume: bool = False, **overrides) -> dict:
    cache = open_cache(cache_path)
    out = Path(out_dir)
    ckpt_dir = out / CHECKPOINT_DIR
    ckpt.recover(ckpt_dir)  # a save a kill interrupted is finished first (the caller holds the run's lock)
    meta = None
    if resume:
        if not ckpt_dir.exists():
            raise ckpt.CheckpointError(f"{ckpt_dir}: nothing to resume from (no epoch of this run finished its "
                                       "checkpoint); start the run again without --resume")
        meta = ckpt.read_meta(ckpt_dir)
        ckpt.check_same_cache(meta, cache, ckpt_dir)
        config = _resumed_config(meta, config, overrides)
    else:
        if (ckpt_dir / ckpt.META_FILE).exists():
            raise ConfigError(f"{ckpt_dir} exists: pass --resume to continue that run, or choose another --output")
        config = (config or TrainConfig()).replace(**overrides)
    device = resolve_device(config.device)  # before the run folder exists: a typo leaves nothing behind
    refuse_test_split(cache)
    if config.supervision in LABELLED:
        require_ground_truth(cache, f"--supervision {config.supervision}")
    out.mkdir(parents=True, exist_ok=True)

    if config.threads:
        torch.set_num_threads(config.threads)
    crop_mode = resolve_crop_mode(config.crop_mode, cache)
    model = build_model(config, cache, device)
    optimizer = make_optimizer(model, config)
    criterion = DistillationLoss(config, torch.from_numpy(seen_classes(cache, config.unseen)).to(device))
    start_epoch, step = 0, 0
    metrics_path = out / METRICS_FILE
    if meta is not None:
        ckpt.check_shapes(ckpt_dir, {k: tuple(v.shape) for k, v in model.state_dict().items()})
        model.load_state_dict(ckpt.load_weights(ckpt_dir))
        optimizer.load_state_dict(ckpt.load_optimizer_state(ckpt_dir, meta))
        start_epoch, step = meta["epoch"], meta["step"]
        _rewrite_metrics(metrics_path, start_epoch)
    else:
        with atomic_write(metrics_path) as tmp:
            tmp.write_text("")

    if cache.num_images == 0:
        raise ConfigError(f"{cache.path} holds no images; nothing to train on")
    if "union_score" in config.loss_targets.values():
        cache.require_level("union", why="the union loss trains on union CLIP scores")
    if "union" in config.feature_targets.values():
        cache.require_level("union", why="the feature loss pulls the union branch towards union CLIP embeddings")
    data = TrainData(cache, config, crop_mode)
    if data.num_images == 0:
        raise ConfigError(f"{cache.path} has no usable image (all skipped or none); nothing to train on")
    if not data.in_memory and not heap_tunables_set():
        log.info("streaming in a process started without glibc's heap tunables (GLIBC_TUNABLES=%s, as the hoi "
                 "program starts): peak memory can creep up by 15-20%% over the first epochs", ":".join(HEAP_TUNABLES))
    class_mask = torch.from_numpy(object_class_mask(cache)).to(device)
    total = config.epochs * len(data)
    log.info("training %s on %s (%s; learning from %s): %d images, %d steps, device %s", out, cache.path,
             ", ".join(config.active_losses), SUPERVISION_WORDS[config.supervision], data.num_images, total, device)
    metrics = meta["metrics"] if meta is not None else {}
    for epoch in range(start_epoch, config.epochs):
        metrics, step = train_one_epoch(model, criterion, data.epoch(epoch), optimizer,
                                        lambda s: lr_factor(s, total, config), class_mask=class_mask, device=device,
                                        epoch=epoch, step=step, config=config, num_batches=len(data))
        with metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        ckpt.save_checkpoint(ckpt_dir, model, optimizer, config=config.to_dict(), cache=cache, epoch=epoch + 1,
                             step=step, metrics=metrics)
        log.info("epoch %d/%d: loss %.4f, %.0f pairs/s", epoch + 1, config.epochs, metrics["loss"],
                 metrics["pairs_per_s"])
    return {**metrics, "checkpoint": str(ckpt_dir)}
