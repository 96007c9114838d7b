"""Train the minibench CLIP contrastively on the web corpus; write the shipped checkpoint.

    python -m minibench.clip_train --out minibench/model --steps 2500 [--corpus runs/minibench/web/corpus.npz]

open_clip's own model class and :class:`open_clip.loss.ClipLoss`; AdamW without weight
decay on 1-D parameters and ``logit_scale``; ``logit_scale`` clamped to ln(100) after each
step; warm-up then cosine learning rate; everything seeded. The checkpoint is fp16
safetensors (see :func:`checkpoint_tensors`; open_clip casts it back to fp32 on load).

Captions repeat within a batch (a few hundred distinct alt texts, batch 128): those are
false negatives for ClipLoss, which keep the loss well above zero while accuracy still
climbs, so the held-out figures (whole scenes and union crops), not the loss, are what the
run reports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

from . import clip
from .corpus import WEB_SCENES, caption, load_corpus, render_corpus, render_heldout, save_corpus
from .labels import NUM_CLASSES, PROMPTS

EVAL_SCENES = 400
STEPS = 2600
LR = 5e-4


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def caption_tokens() -> torch.Tensor:
    """int64 [C * (C + 1), context]: the tokens of every alt text, row ``a * (C + 1) + b + 1``
    for classes (a, b) (b = -1: one class named)."""
    return clip.tokenize([caption(a, b) for a in range(NUM_CLASSES) for b in range(-1, NUM_CLASSES)])


def train(corpus: dict, steps: int, batch_size: int = 128, lr: float = LR, weight_decay: float = 0.1,
          warmup: int = 100, seed: int = 0, augment: bool = True, log_every: int = 0, log=print,
          probe=None, probe_every: int = 0):
    """Train a fresh model on ``corpus`` (see :func:`minibench.corpus.render_corpus`).

    Returns (model in eval mode, losses: list of float, one per step). ``augment``
    mirrors half of each batch (an interaction reads the same mirrored). ``probe(step,
    model)`` is called every ``probe_every`` steps (the model in eval mode meanwhile).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = open_clip.create_model(clip.register())  # random init: there are no weights to start from
    model.train()
    tokens = caption_tokens()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    images = corpus["images"]
    text_row = corpus["caption"][:, 0] * (NUM_CLASSES + 1) + corpus["caption"][:, 1] + 1   # [M] into tokens
    order, pos, losses = rng.permutation(len(images)), 0, []
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(images)), 0
        idx = np.sort(order[pos:pos + min(batch_size, len(order))])
        pos += batch_size
        x = clip.to_input(images[idx], model)
        if augment:
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip] = x[flip].flip(-1)
        # Encode each distinct caption once and index: same gradients as encoding all 128.
        rows, inverse = np.unique(text_row[idx], return_inverse=True)
        text = model.encode_text(tokens[rows], normalize=True)[torch.from_numpy(inverse)]
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        loss = loss_fn(model.encode_image(x, normalize=True), text, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{steps}  loss {np.mean(losses[-log_every:]):.3f}  "
                f"logit_scale {model.logit_scale.exp().item():.1f}")
        if probe is not None and probe_every and (step + 1) % probe_every == 0 and step + 1 < steps:
            probe(step + 1, model.eval())
            model.train()
    return model.eval(), losses


def checkpoint_tensors(state_dict: dict) -> dict:
    """The tensors as shipped: fp16, except the positional embeddings, kept in fp32 (with
    fp16-rounded values all the same). open_clip interpolates those in the checkpoint's
    dtype when ``force_image_size`` differs, and CPU bicubic interpolation has no fp16 kernel."""
    return {k: (v.detach().half().float() if k.endswith("positional_embedding") else v.detach().half()).contiguous()
            for k, v in state_dict.items()}


def save_checkpoint(model, out_dir: str | Path, record: dict) -> Path:
    """Write the fp16 weights, the model config (both forms open_clip reads) and ``record``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / clip.WEIGHTS.name
    save_file(checkpoint_tensors(model.state_dict()), str(weights))
    if out.resolve() != clip.MODEL_DIR:
        shutil.copyfile(clip.CONFIG, out / clip.CONFIG.name)
    cfg = open_clip.get_model_preprocess_cfg(model)
    (out / "open_clip_config.json").write_text(json.dumps(  # for open_clip's "local-dir:" loading
        {"model_cfg": json.loads(clip.CONFIG.read_text()),
         "preprocess_cfg": {k: cfg[k] for k in ("size", "mean", "std", "interpolation", "resize_mode")}},
        indent=1) + "\n")
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return weights


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m minibench.clip_train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the checkpoint (minibench/model for the shipped one)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--corpus", help="web corpus .npz (rendered there first when missing; in memory when not given)")
    ap.add_argument("--web-scenes", type=int, default=WEB_SCENES, help="scenes to render when rendering the corpus")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-scenes", type=int, default=EVAL_SCENES, help="held-out scenes for the rank accuracy")
    ap.add_argument("--probe-every", type=int, default=0,
                    help="also measure on a quarter of the held-out scenes every this many steps (0: never)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    say = lambda msg: print(msg, flush=True)  # noqa: E731

    t0 = time.time()
    if args.corpus and Path(args.corpus).is_file():
        corpus = load_corpus(args.corpus)
    else:
        corpus = render_corpus(args.web_scenes, seed=args.seed, workers=args.threads)
        if args.corpus:
            save_corpus(corpus, args.corpus, args.seed)
    t_corpus = time.time() - t0
    say(f"corpus: {len(corpus['kind'])} samples ({int((corpus['kind'] == 1).sum())} whole scenes) in {t_corpus:.0f} s")

    held = render_heldout(args.eval_scenes, seed=args.seed, workers=args.threads)
    quarter = {k: v[:len(v) // 4] for k, v in held.items()}  # scenes and their labels, crops and theirs

    def probe(step, model):
        a = clip.heldout_accuracy(model, quarter)
        say(f"  probe at step {step}: scenes class mAP {a['scenes']['class_map']:.3f}, union crops top-1 "
            f"{a['union_crops']['top1']:.3f} ({a['union_crops']['top1_given_object']:.3f} given the object)")

    t0 = time.time()
    model, losses = train(corpus, args.steps, args.batch_size, args.lr, seed=args.seed, log_every=50, log=say,
                          probe=probe, probe_every=args.probe_every)
    t_train = time.time() - t0
    acc = clip.heldout_accuracy(model, held)
    sc, un = acc["scenes"], acc["union_crops"]
    say(f"trained {args.steps} steps in {t_train / 60:.1f} min; held-out whole scenes: class mAP "
        f"{sc['class_map']:.3f} (chance {sc['chance_class_map']:.3f}), top class in the scene "
        f"{sc['top1_in_scene']:.3f} (chance {sc['chance_top1_in_scene']:.3f}), n = {sc['n']}; union crops cut "
        f"as the teacher cuts them: top-1 {un['top1']:.3f} among all {len(PROMPTS)} classes (chance "
        f"{un['chance']:.3f}), {un['top1_given_object']:.3f} given the object (chance "
        f"{un['chance_given_object']:.3f}), n = {un['n']}")
    record = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "threads": args.threads, "corpus_samples": int(len(corpus["kind"])),
              "corpus_whole_scenes": int((corpus["kind"] == 1).sum()),
              "corpus_seconds": round(t_corpus, 1), "train_seconds": round(t_train, 1),
              "final_loss_mean_50": float(np.mean(losses[-50:])), "heldout_scenes": sc,
              "heldout_union_crops": un, "open_clip": open_clip.__version__, "torch": torch.__version__}
    weights = save_checkpoint(model, args.out, record)
    record["heldout_scenes_by_input_size"] = clip.scenes_by_input_size(weights, held)
    save_checkpoint(model, args.out, record)
    say("held-out whole scenes by input size (class mAP): " + ", ".join(
        f"{s} px {a['class_map']:.3f}" for s, a in record["heldout_scenes_by_input_size"].items()))
    say(f"wrote {weights} ({weights.stat().st_size / 2 ** 20:.1f} MiB)")


if __name__ == "__main__":
    main()
