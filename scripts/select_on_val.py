"""Choose student settings on the bundled benchmark's validation split, never on its test split.

    python scripts/select_on_val.py --out runs/select [--seed 0] [--train-seed 0] [--rows NAME ...]
    python scripts/select_on_val.py --out runs/select --teacher   # the teacher's crop rule

Builds the world and the teacher caches of its train and validation splits exactly as
``make demo`` does (``hoi.demo``), trains one student per candidate row on the train
split (HOI labels unused), and evaluates each on the validation split, whose labels are
used for nothing else. Late-fusion rows are also scored at several union weights. Prints
one table and writes ``OUT/selection.json``. With ``--teacher``: the teacher baseline (CLIP
on union boxes) on the validation split for each crop rule of ``TEACHER_CROPS`` instead.
The README says which settings were chosen this way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.ablate import GRID, LABELLED_ROWS, Row  # noqa: E402

_ALL = GRID[3].overrides  # all levels, late fusion
CANDIDATES = {r.name: r for r in GRID + (
    Row("all-late-lme", "all levels, late fusion, log-mean-exp MIL", {**_ALL, "mil": "lme"}),
    Row("all-late-t0.02", "all levels, late fusion, soft labels at T = 0.02", {**_ALL, "temperature": 0.02}),
    Row("all-late-shared", "all levels, late fusion, one shared adapter", {**_ALL, "adapters": "shared"}),
    Row("all-late-depthwise", "all levels, late fusion, depthwise context", {**_ALL, "context": "depthwise"}),
    Row("all-late-nocontext", "all levels, late fusion, no context convolution", {**_ALL, "context": "none"}),
    Row("all-early-depthwise", "all levels, early fusion, depthwise context", {**_ALL, "fusion": "early",
                                                                               "context": "depthwise"}),
    Row("all-early-nocontext", "all levels, early fusion, no context convolution", {**_ALL, "fusion": "early",
                                                                                 "context": "none"}),
    Row("all-late-plain", "all levels, late fusion, no residual, no feature loss",
        {**_ALL, "residual": False, "w_feature": 0.0}),
    Row("all-late-residual", "all levels, late fusion, residual", {**_ALL, "residual": True, "w_feature": 0.0}),
    Row("all-late-feature", "all levels, late fusion, feature loss", {**_ALL, "residual": False, "w_feature": 1.0}),
    Row("all-late-res-feat", "all levels, late fusion, residual + feature loss",
        {**_ALL, "residual": True, "w_feature": 1.0}),
    Row("all-late-feature3", "all levels, late fusion, feature loss 3", {**_ALL, "residual": False, "w_feature": 3.0}),
    Row("all-late-feature10", "all levels, late fusion, feature loss 10",
        {**_ALL, "residual": False, "w_feature": 10.0}),
    Row("all-late-feature3-b32", "all levels, late fusion, feature loss 3, 32 images a step",
        {**_ALL, "residual": False, "w_feature": 3.0, "batch_size": 32}),
    Row("all-late-feature10-b32", "all levels, late fusion, feature loss 10, 32 images a step",
        {**_ALL, "residual": False, "w_feature": 10.0, "batch_size": 32}),
    Row("all-late-plain-b32", "all levels, late fusion, no feature loss, 32 images a step",
        {**_ALL, "residual": False, "w_feature": 0.0, "batch_size": 32}),
    *(Row(f"all-late-contrast{w:g}", f"all levels, late fusion, feature loss 10 and contrastive {w:g}",
          {**_ALL, "w_feature": 10.0, "w_contrast": w, "batch_size": 32}) for w in (0.3, 1.0, 3.0)),
    # a wider student (the unseen verb's gap is one of capacity too, at two to three times the cost)
    *(Row(f"all-late-h{h}", f"all levels, late fusion, {h} features", {**_ALL, "hidden_dim": h}) for h in (384, 512)),
    # the supervised references: how much of the feature loss a labelled student wants
    *(Row(f"{r.name}-feature{w:g}", f"{r.label}, feature loss {w:g}", {**r.overrides, "w_feature": w})
      for r in LABELLED_ROWS for w in ((0.0, 1.0, 3.0, 10.0) if r.name == "fully-supervised" else (0.0, 10.0))),
)}
UNION_WEIGHTS = (0.3, 0.5, 0.7)
# (crop mode, union margin) of the teacher's union crops
TEACHER_CROPS = (("squash", 0.0), ("squash", 0.1), ("pad", 0.0), ("pad", 0.1), ("pad", 0.2), ("center", 0.1))


def select_teacher(p: dict, w: dict, ls, out: Path) -> dict:
    """The teacher baseline's validation mAP for each crop rule (one validation cache each)."""
    from dataclasses import replace

    from hoi.demo import demo_teacher
    from pipeline.teacher.options import RunOptions
    from pipeline.teacher.run import build_teacher_cache
    from trainer.predict import run_eval

    table = {}
    for mode, margin in TEACHER_CROPS:
        cache = out / "teacher" / f"val-{mode}-{margin}.zarr"
        build_teacher_cache(cache, images=w["images_val"], detections=w["detections_val"],
                            annotations=w["instances_val"], labelspace=ls,
                            teacher=replace(demo_teacher(), crop_mode=mode, union_margin=margin),
                            run=RunOptions(images_per_shard=512, workers=2))
        table[f"{mode} {margin}"] = run_eval(cache, model="teacher")[0].summary()["default"]
        print(f"teacher, crop {mode}, margin {margin}: Full {100 * table[f'{mode} {margin}']['full']:.2f}",
              flush=True)
    return table


def main(argv=None) -> None:
    from hoi.demo import DEMO_JOBS, DEMO_TRAINING, cache_step, demo_paths, world_step
    from hoi.logs import setup_logging
    from trainer.ablate import ablate, format_ablation, format_zero_shot, unseen_rows, zero_shot_table
    from trainer.config import TrainConfig
    from trainer.predict import run_eval

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/select")
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    ap.add_argument("--train-seed", type=int, default=0, help="students' seed")
    ap.add_argument("--rows", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--teacher", action="store_true", help="compare the teacher's crop rules instead")
    ap.add_argument("--zero-shot", action="store_true",
                    help="also train each row without each zero-shot split's classes and print its zero-shot table")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging(0)

    p = demo_paths(args.out)
    w, ls = world_step(p, 2000, 600, 600, args.seed, print)
    if args.teacher:
        table = select_teacher(p, w, ls, Path(args.out))
        (Path(args.out) / "teacher_selection.json").write_text(json.dumps(table, indent=1) + "\n")
        return
    cache_step(p, w, ls, ("train", "val"), print)
    config = TrainConfig(progress=False, seed=args.train_seed, **DEMO_TRAINING)
    candidates = tuple(CANDIDATES[n] for n in args.rows)
    splits = tuple(ls.zero_shot_splits) if args.zero_shot else ()
    grid = candidates + tuple(u for c in candidates for u in unseen_rows(splits, c, prefix=f"{c.name}-without-"))
    rows = ablate(p["train_cache"], p["val_cache"], Path(args.out) / "val", config, rows=grid, jobs=DEMO_JOBS)
    print(format_ablation([r for r in rows if "-without-" not in r["name"]]))
    zero_shot = {}
    for c in candidates if splits else ():
        zero_shot[c.name] = zero_shot_table(rows, trained_with=c.name, prefix=f"{c.name}-without-")
        print(f"\n{c.name}: " + format_zero_shot(zero_shot[c.name]))
    weights = {}
    for r in rows:
        if r.get("fusion") == "late" and r.get("ho") and r.get("union") and "-without-" not in r["name"]:
            ckpt = Path(args.out) / "val" / r["name"] / "checkpoint"
            weights[r["name"]] = {str(u): run_eval(p["val_cache"], checkpoint=ckpt, union_weight=u)[0].summary()
                                  ["default"] for u in UNION_WEIGHTS}
            print(r["name"], "union weight:", ", ".join(f"{u}: {100 * v['full']:.2f}"
                                                        for u, v in weights[r["name"]].items()))
    out = {"world_seed": args.seed, "train_seed": args.train_seed, "split": "val", "rows": rows,
           "union_weights": weights, "zero_shot": zero_shot}
    (Path(args.out) / "selection.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
