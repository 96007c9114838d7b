"""The paper's ablation grid: which supervision levels and branches, and how pair scores fuse.

One training run per row (into ``OUT/<row>/``; a row whose run already finished is
reused), each predicted and evaluated on the test cache, plus the teacher and random
baselines on the same pairs; one table, like the paper's, and ``OUT/ablation.json``.

Zero-shot rows (:func:`unseen_rows`) train the all-levels student without the unseen
classes of one split; :func:`zero_shot_table` sets each against the same student trained
with them, the teacher and chance, on that split's seen and unseen classes.

The supervised references (:data:`LABELLED_ROWS`) are the all-levels student trained on the
cache's ground truth instead of CLIP's scores (``--supervision``): they use HOI labels, so
they are not zero-shot, and say how far the annotation-free student is from them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from hoicore.files import write_json_atomic
from hoicore.logs import basic_setup

from .branches import switches
from .config import TrainConfig
from .engine import train_or_reuse
from .predict import run_eval


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    overrides: dict


# Supervision levels: "global" = the global and human-object branches learning from the
# global CLIP scores; "union" = the union branch learning from the union CLIP scores.
# Each row sets every branch switch and the fusion, so options given to `hoi ablate` change
# the rest of the configuration only.
_ALL = switches("global", "ho", "union")
GRID = (
    Row("global-level", "global level (global + human-object branches)", switches("global", "ho")),
    Row("union-level", "union level (union branch)", switches("union")),
    Row("all-no-global", "both levels, without the global branch", switches("ho", "union")),
    Row("all-late", "both levels, late fusion", _ALL),
    Row("all-early", "both levels, early fusion", switches("global", "ho", "union", fusion="early")),
)
UNSEEN_PREFIX = "without-"
# The same all-levels student trained on HOI labels (trainer.config.SUPERVISION), without the
# feature loss: held to CLIP's embeddings, a labelled student loses most of what its labels
# teach (validation, pair labels: Full 58.71 at weight 0, 53.61 at 1, 31.54 at 10), and
# without it the fully supervised student trained without a split also scores that split's
# unseen classes best on average (README, "How far from supervised").
_LABELLED = {**_ALL, "w_feature": 0.0}
LABELLED_ROWS = (
    Row("weakly-supervised", "both levels, late fusion, image-level HOI labels",
        {**_LABELLED, "supervision": "image-labels"}),
    Row("fully-supervised", "both levels, late fusion, pair HOI labels", {**_LABELLED, "supervision": "pair-labels"}),
)
FULLY_UNSEEN_PREFIX = "fully-supervised-without-"


def unseen_rows(splits, base: Row = GRID[3], prefix: str = UNSEEN_PREFIX) -> tuple[Row, ...]:
    """One row per zero-shot split: ``base`` (all levels, late fusion) trained without the
    split's unseen classes, named ``<prefix><split>``."""
    return tuple(Row(f"{prefix}{s}", f"{base.label}, without {s}'s unseen classes",
                     {**base.overrides, "unseen": s}) for s in splits)


# The baselines, evaluated on the same pairs: chance is uniform random scores; dense is
# CLIP's dense map pooled over the union boxes (what a --residual student starts from).
BASELINES = (("chance", "random", "chance: random scores"), ("teacher", "teacher", "teacher: CLIP on union boxes"),
             ("clip-dense", "dense", "CLIP's dense map on union boxes"))


def ablate(train_cache, test_cache, out_dir, config: TrainConfig | None = None, *, det_exponent: float = 1.0,
           labelspace: str | None = None, rows: tuple[Row, ...] = GRID, image_labels=None, jobs: int = 1) -> list[dict]:
    """Run the grid; return one dict per row (label, switches, summary) and write ablation.json.
    ``image_labels``: an ``anno.mat`` for the Known-Object images (see :func:`run_eval`).
    ``jobs``: rows trained (and evaluated) at once, each in a process of its own; with
    ``config.threads`` set, a row's numbers are the same whatever ``jobs`` is."""
    config = config or TrainConfig()
    out = Path(out_dir)
    configs = [config.replace(**row.overrides).validated() for row in rows]  # fail before any work
    eval_kw = {"det_exponent": det_exponent, "labelspace": labelspace, "image_labels": image_labels}
    results = []
    for name, model, label in BASELINES:
        res, _ = run_eval(test_cache, model=model, results=out / name / "results.json",
                          temperature=config.temperature, **eval_kw)
        results.append({"name": name, "label": label, "summary": json.loads(res.summary_json())})
    tasks = [(train_cache, test_cache, out / row.name, cfg, eval_kw) for row, cfg in zip(rows, configs)]
    for row, cfg, summary in zip(rows, configs, _run_rows(tasks, jobs)):
        results.append({"name": row.name, "label": row.label, "global": cfg.global_branch, "ho": cfg.ho_branch,
                        "union": cfg.union_branch, "fusion": cfg.fusion, "unseen": cfg.unseen,
                        "supervision": cfg.supervision, "summary": summary})
    write_json_atomic(out / "ablation.json", results)
    return results


def train_and_evaluate(train_cache, test_cache, out_dir, config: TrainConfig, eval_kw: dict) -> dict:
    """Train one row into ``out_dir`` (or reuse its finished run), evaluate it on the test
    cache and return the evaluator's summary. Training and evaluation both run on
    ``config.threads`` threads when it is set (torch's threaded kernels sum in an order that
    depends on the thread count, so this is what makes a row's numbers independent of the
    machine); the caller's thread count is restored after."""
    threads = torch.get_num_threads()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        checkpoint = train_or_reuse(train_cache, out_dir, config)
        res, _ = run_eval(test_cache, model="student", checkpoint=checkpoint, results=Path(out_dir) / "results.json",
                          device=config.device, **eval_kw)
        return json.loads(res.summary_json())
    finally:
        torch.set_num_threads(threads)


def _run_rows(tasks: list[tuple], jobs: int):
    """Each task's summary (:func:`train_and_evaluate`), in order; ``jobs`` > 1 runs that many
    at once in worker processes (spawned: the parent may hold threads and CUDA state)."""
    if jobs <= 1 or len(tasks) <= 1:
        yield from (train_and_evaluate(*t) for t in tasks)
        return
    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=basic_setup, initargs=(logging.getLogger().getEffectiveLevel(),)) as pool:
        futures = [pool.submit(train_and_evaluate, *t) for t in tasks]
        try:
            yield from (f.result() for f in futures)
        except BaseException:
            for f in futures:  # a failed row stops the grid: rows not started are not run
                f.cancel()
            raise


def format_ablation(results: list[dict]) -> str:
    """The rows as the paper prints them: branches, fusion, then mAP (%) Default Full / Rare /
    Non-rare and Known-Object Full."""
    mark = {True: "x", False: "", None: ""}

    def pct(x, width: int) -> str:  # an undefined mean (no class in the subset) is null
        return f"{'-':>{width}}" if x is None else f"{100 * x:{width}.2f}"

    head = f"{'':<46}{'glob':>5}{'h-o':>5}{'union':>6}{'fusion':>8}{'Full':>8}{'Rare':>8}{'Non-rare':>10}{'KO Full':>9}"
    lines = [head, "-" * len(head)]
    for r in results:
        d, ko = r["summary"]["default"], r["summary"]["known_object"]
        lines.append(f"{r['label']:<46}{mark[r.get('global')]:>5}{mark[r.get('ho')]:>5}{mark[r.get('union')]:>6}"
                     f"{r.get('fusion', ''):>8}{pct(d['full'], 8)}{pct(d['rare'], 8)}{pct(d['non_rare'], 10)}"
                     f"{pct(ko['full'], 9)}")
    return "\n".join(lines)


def zero_shot_table(results: list[dict], trained_with: str = GRID[3].name,
                    prefix: str = UNSEEN_PREFIX, fully_prefix: str = FULLY_UNSEEN_PREFIX) -> list[dict]:
    """Per zero-shot split with a ``<prefix><split>`` row in ``results``: Default mAP
    {full, seen, unseen} of the student trained without the split's unseen classes, of the
    same student trained with them (row ``trained_with``), of the teacher, of CLIP's dense
    map and of chance; and, where a ``<fully_prefix><split>`` row is there, of the fully
    supervised student trained without them (``fully_supervised_without``)."""
    by_name = {r["name"]: r for r in results}

    def zs(name: str, split: str) -> dict:
        r = by_name[name]["summary"]["zero_shot"]["default"][split]
        return {k: r[k] for k in ("full", "seen", "unseen")}

    out = []
    for r in results:
        if not r["name"].startswith(prefix):
            continue
        split = r["name"][len(prefix):]
        out.append({"split": split, "setting": r["summary"]["zero_shot"]["default"][split]["setting"],
                    "trained_without": zs(r["name"], split), "trained_with": zs(trained_with, split),
                    "teacher": zs("teacher", split), "clip_dense": zs("clip-dense", split),
                    "chance": zs("chance", split),
                    **({"fully_supervised_without": zs(fully_prefix + split, split)}
                       if fully_prefix + split in by_name else {})})
    return out


def format_zero_shot(table: list[dict]) -> str:
    """The zero-shot rows: unseen-class mAP (%) of each model, then the seen classes'."""
    def pct(x) -> str:
        return f"{'-':>9}" if x is None else f"{100 * x:9.2f}"

    models = ("trained_without", "trained_with", "teacher", "clip_dense", "chance")
    if table and "fully_supervised_without" in table[0]:
        models += ("fully_supervised_without",)
    heads = {m: m.replace("_", " ") for m in models} | {"fully_supervised_without": "fully-sup w/o"}
    head = f"{'split':<24}" + "".join(f"{heads[m]:>17}" for m in models)
    lines = ["unseen classes, Default mAP (%); in brackets the seen classes'"
             + ("; the last column is trained on HOI labels of the seen classes" if len(models) > 5 else ""),
             head, "-" * len(head)]
    for t in table:
        cells = "".join(f"{pct(t[m]['unseen'])} ({pct(t[m]['seen']).strip():>5})" for m in models)
        lines.append(f"{t['setting'] + ' (' + t['split'] + ')':<24}{cells}")
    return "\n".join(lines)
