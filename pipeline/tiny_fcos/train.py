"""Train a tiny-fcos detector on a split's object boxes; report its box AP@0.5 on a test split.

    python -m pipeline.tiny_fcos.train --world runs/minibench --out minibench/model/detector [--epochs N]
    python -m pipeline.tiny_fcos.train --images DIR --annotations FILE --labelspace FILE --out DIR \\
        [--test-images DIR --test-annotations FILE] [--compare DETECTIONS.h5]

It learns from boxes and categories only, never from HOI labels (as a COCO detector knows
nothing of interactions): every distinct human box and object box of an image's pairs is
one instance (:func:`hoidata.box_ap.ground_truth_boxes`). The detector's categories are
the label space's objects, person included, in its order.

``--world DIR`` is a shorthand for a folder in the bundled benchmark's layout
(``images/{train,test}/``, ``instances_{train,test}.json``, ``labelspace.json``, and the
simulated detector's ``detections_test.h5`` to compare with). The script is generic,
which is why it lives here beside the architecture and not in minibench (minibench
imports only hoidata).

Training: horizontal flips, AdamW, linear warm-up then cosine decay, gradient clipping,
everything seeded. One torch thread by default: on a 2-core machine where anything else
runs, two OpenMP threads spin against it (measured: 8 s per step of 16 images, against
0.55-0.6 s with one thread); on an idle machine ``--threads 2`` may be faster. The
checkpoint folder gets ``detector_config.json``, ``detector.safetensors`` and
``training.json`` (settings, timings, test AP).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hoidata.box_ap import BoxAP, box_ap, ground_truth_boxes
from hoidata.detections import load_detections
from hoidata.ground_truth import read_annotations
from hoidata.labelspace import LabelSpace
from pipeline.detection.options import DetectOptions
from pipeline.images import decode
from pipeline.tiny_fcos.model import TinyFcosConfig, build_tiny_fcos, save_tiny_fcos


@dataclass(frozen=True)
class TrainSettings:
    """How tiny-fcos is trained (recorded in training.json)."""

    epochs: int = 30               # 2000 images at batch 16: 3750 steps, ~35 min at 0.55 s/step
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    clip_grad: float = 10.0
    flip: bool = True
    seed: int = 0
    threads: int = 1               # see the module docstring
    max_steps: int | None = None   # stop early (to time a few steps)


@dataclass
class Sample:
    """One training image: its file and its instances (boxes float32 [k, 4] coord, labels int64 [k])."""

    path: Path
    boxes: np.ndarray
    labels: np.ndarray


def load_samples(images: str | Path, annotations: str | Path, labelspace: LabelSpace) -> list[Sample]:
    """Every annotated image with its distinct boxes (images without pairs: no instances)."""
    ann = read_annotations(annotations, labelspace)
    boxes, labels = ground_truth_boxes(ann, labelspace.human)
    out = []
    for name, b, lab in zip(ann.file_names, boxes, labels):
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])  # a degenerate box stops torchvision's training
        out.append(Sample(Path(images) / name, b[ok].astype(np.float32), lab[ok]))
    return out


def _batch(samples: list[Sample], flips: np.ndarray) -> tuple[list[torch.Tensor], list[dict]]:
    """float32 [3, H, W] images in 0..1 and their targets, flipped left-right where ``flips``."""
    images, targets = [], []
    for s, flip in zip(samples, flips):
        # decoded as the detector stage decodes (any mode to RGB, 16-bit grey scaled)
        x = torch.tensor(decode(s.path)).permute(2, 0, 1).float().div_(255)
        b = torch.from_numpy(s.boxes.copy())
        if flip:
            w = x.shape[-1]
            x = x.flip(-1)
            b = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        images.append(x)
        targets.append({"boxes": b.reshape(-1, 4), "labels": torch.from_numpy(s.labels)})
    return images, targets


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_detector(samples: list[Sample], cfg: TinyFcosConfig, settings: TrainSettings = TrainSettings(),
                   log=print) -> tuple[torch.nn.Module, dict]:
    """A tiny-fcos trained on ``samples`` (labels index ``cfg.categories``); returns it in eval
    mode and the run's statistics (steps, seconds, seconds per step, last losses)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = build_tiny_fcos(cfg).train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # norms and biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    per_epoch = math.ceil(len(samples) / settings.batch_size)
    total = per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    step, t0, recent = 0, time.perf_counter(), []
    while step < total:
        order = rng.permutation(len(samples))
        for s in range(0, len(order), settings.batch_size):
            if step >= total:
                break
            idx = order[s:s + settings.batch_size]
            images, targets = _batch([samples[i] for i in idx], settings.flip & (rng.random(len(idx)) < 0.5))
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, settings.lr, settings.warmup_steps)
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
                raise FloatingPointError(f"step {step}: the loss is not finite ({parts}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
            opt.step()
            recent = (recent + [{k: v.item() for k, v in losses.items()}])[-50:]
            step += 1
            if step % 50 == 0 or step == total:
                elapsed = time.perf_counter() - t0
                means = {k: np.mean([r[k] for r in recent]) for k in recent[0]}
                log(f"step {step}/{total} (epoch {(step - 1) // per_epoch + 1}): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in means.items())
                    + f"; {elapsed / step:.2f} s/step, {elapsed / 60:.1f} min")
    seconds = time.perf_counter() - t0
    stats = {"steps": step, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(step, 1), 3),
             "final_losses_mean_50": {k: float(np.mean([r[k] for r in recent])) for k in recent[0]} if recent else {}}
    return model.eval(), stats


def test_ap(checkpoint: Path, images: Path, annotations: Path, labelspace: LabelSpace,
            options: DetectOptions = DetectOptions(progress=False)) -> BoxAP:
    """Box AP@0.5 of the checkpoint on a split, its detections made by the detector stage
    (``hoi detections run``) with ``options``."""
    from pipeline.detection.stage import run_detector

    with tempfile.TemporaryDirectory() as tmp:
        dets = run_detector(Path(tmp) / "test.h5", images=images, model="tiny-fcos", weights=checkpoint,
                            labelspace=labelspace, images_list=annotations, options=options)
    return box_ap(dets, read_annotations(annotations, labelspace), labelspace.num_objects, labelspace.human)


def format_ap_table(names, columns: dict[str, BoxAP]) -> str:
    """Per-category AP of each column, and their means, as text."""
    width = max(14, *(len(h) + 2 for h in columns))  # a column never runs into the next
    lines = [f"{'box AP@0.5':14s}" + "".join(f"{h:>{width}s}" for h in columns)]
    for c, name in enumerate(names):
        cells = ["—" if np.isnan(r.ap[c]) else f"{100 * r.ap[c]:.1f}" for r in columns.values()]
        lines.append(f"{name:14s}" + "".join(f"{x:>{width}s}" for x in cells))
    lines.append(f"{'mean':14s}" + "".join(f"{100 * r.mean:>{width}.1f}" for r in columns.values()))
    return "\n".join(lines)


def _paths(args) -> dict:
    """Input paths from --world, overridden by any given one by one."""
    world = Path(args.world) if args.world else None
    fill = lambda given, rel: given if given or world is None else str(world / rel)  # noqa: E731
    paths = {"images": fill(args.images, "images/train"), "annotations": fill(args.annotations, "instances_train.json"),
             "labelspace": fill(args.labelspace, "labelspace.json"),
             "test_images": fill(args.test_images, "images/test"),
             "test_annotations": fill(args.test_annotations, "instances_test.json"),
             "compare": fill(args.compare, "detections_test.h5")}
    missing = [k for k in ("images", "annotations", "labelspace") if not paths[k]]
    if missing:
        raise SystemExit(f"give --world or --{', --'.join(m.replace('_', '-') for m in missing)}")
    for key in ("images", "annotations", "labelspace"):
        if not Path(paths[key]).exists():
            hint = " (build the world first: python -m minibench.build --out DIR --no-web)" if world else ""
            raise SystemExit(f"{paths[key]}: not found{hint}")
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.tiny_fcos.train", description=__doc__.split("\n")[0])
    ap.add_argument("--world", help="a folder in the minibench layout (gives every path below)")
    ap.add_argument("--images", help="training images folder")
    ap.add_argument("--annotations", help="training annotations (instances_*.json or another format)")
    ap.add_argument("--labelspace", help="label space (name or file); its objects are the categories")
    ap.add_argument("--test-images", help="test images folder (for the reported AP)")
    ap.add_argument("--test-annotations", help="test annotations")
    ap.add_argument("--compare", help="a detections file of the test split to report beside ours")
    ap.add_argument("--out", required=True, help="checkpoint folder (minibench/model/detector for the shipped one)")
    defaults = TrainSettings()
    for f in ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "seed", "threads", "max_steps"):
        kind = float if isinstance(getattr(defaults, f), float) else int
        ap.add_argument(f"--{f.replace('_', '-')}", type=kind, default=getattr(defaults, f))
    ap.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    args = ap.parse_args(argv)
    paths = _paths(args)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, flip=not args.no_flip,
                             seed=args.seed, threads=args.threads, max_steps=args.max_steps)
    torch.set_num_threads(settings.threads)
    say = lambda msg: print(msg, flush=True)  # noqa: E731

    ls = LabelSpace.load(paths["labelspace"])
    samples = load_samples(paths["images"], paths["annotations"], ls)
    n_inst = sum(len(s.labels) for s in samples)
    say(f"{len(samples)} training images, {n_inst} instances of {ls.num_objects} categories")
    cfg = TinyFcosConfig(categories=tuple(ls.objects))
    model, stats = train_detector(samples, cfg, settings, log=say)
    extra = {"settings": asdict(settings), "train": stats, "inputs": paths, "labelspace": ls.name,
             "instances": n_inst, "images": len(samples), "torch": str(torch.__version__)}
    out = save_tiny_fcos(model, cfg, args.out, extra)
    say(f"wrote {out} ({stats['steps']} steps in {stats['seconds'] / 60:.1f} min, "
        f"{stats['seconds_per_step']:.2f} s/step at batch {settings.batch_size}, {settings.threads} threads)")

    if paths["test_annotations"] and Path(paths["test_annotations"]).is_file():
        columns = {"tiny-fcos": test_ap(out, Path(paths["test_images"]), Path(paths["test_annotations"]), ls)}
        if paths["compare"] and Path(paths["compare"]).is_file():
            test_ann = read_annotations(paths["test_annotations"], ls)
            columns[Path(paths["compare"]).stem] = box_ap(load_detections(paths["compare"], ls), test_ann,
                                                          ls.num_objects, ls.human)
        say(format_ap_table(ls.objects, columns))
        extra["test_box_ap50"] = {k: v.as_dict(ls.objects) for k, v in columns.items()}
        save_tiny_fcos(model, cfg, out, extra)


if __name__ == "__main__":
    main()
