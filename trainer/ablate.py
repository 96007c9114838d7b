"""The paper's ablation grid: which supervision levels and branches, and how pair scores fuse.

One training run per row (into ``OUT/<row>/``; a row whose run already finished is
reused), each predicted and evaluated on the test cache, plus the teacher and random
baselines on the same pairs; one table, like the paper's, and ``OUT/ablation.json``.

Zero-shot rows (:func:`unseen_rows`) train the all-levels student without the unseen
classes of one split; :func:`zero_shot_table` sets each against the same student trained
with them, the teacher and chance, on that split's seen and unseen classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hoidata.evaluation import EvalResult

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
_ALL = {"global_branch": True, "ho_branch": True, "union_branch": True, "fusion": "late"}
GRID = (
    Row("global-level", "global level (global + human-object branches)", {**_ALL, "union_branch": False}),
    Row("union-level", "union level (union branch)", {**_ALL, "global_branch": False, "ho_branch": False}),
    Row("all-no-global", "both levels, without the global branch", {**_ALL, "global_branch": False}),
    Row("all-late", "both levels, late fusion", _ALL),
    Row("all-early", "both levels, early fusion", {**_ALL, "fusion": "early"}),
)
UNSEEN_PREFIX = "without-"


def unseen_rows(splits, base: Row = GRID[3]) -> tuple[Row, ...]:
    """One row per zero-shot split: ``base`` (all levels, late fusion) trained without the
    split's unseen classes, named ``without-<split>``."""
    return tuple(Row(f"{UNSEEN_PREFIX}{s}", f"{base.label}, without {s}'s unseen classes",
                     {**base.overrides, "unseen": s}) for s in splits)


# The two baselines, evaluated on the same pairs: chance is uniform random scores.
BASELINES = (("chance", "random", "chance: random scores"), ("teacher", "teacher", "teacher: CLIP on union boxes"))


def ablate(train_cache, test_cache, out_dir, config: TrainConfig | None = None, *, det_exponent: float = 1.0,
           labelspace: str | None = None, rows: tuple[Row, ...] = GRID, image_labels=None) -> list[dict]:
    """Run the grid; return one dict per row (label, switches, summary) and write ablation.json.
    ``image_labels``: an ``anno.mat`` for the Known-Object images (see :func:`run_eval`)."""
    config = config or TrainConfig()
    out = Path(out_dir)
    results = []

    def add(name: str, label: str, switches: dict, res: EvalResult) -> None:
        results.append({"name": name, "label": label, **switches, "summary": json.loads(res.summary_json())})

    configs = [config.replace(**row.overrides).validated() for row in rows]  # fail before any work
    for name, model, label in BASELINES:
        res, _ = run_eval(test_cache, model=model, det_exponent=det_exponent, labelspace=labelspace,
                          results=out / name / "results.json", temperature=config.temperature,
                          image_labels=image_labels)
        add(name, label, {}, res)
    for row, cfg in zip(rows, configs):
        checkpoint = train_or_reuse(train_cache, out / row.name, cfg)
        res, _ = run_eval(test_cache, model="student", checkpoint=checkpoint, det_exponent=det_exponent,
                          labelspace=labelspace, results=out / row.name / "results.json", device=cfg.device,
                          image_labels=image_labels)
        add(row.name, row.label, {"global": cfg.global_branch, "ho": cfg.ho_branch, "union": cfg.union_branch,
                                  "fusion": cfg.fusion, "unseen": cfg.unseen}, res)
    (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


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


def zero_shot_table(results: list[dict], trained_with: str = GRID[3].name) -> list[dict]:
    """Per zero-shot split with a ``without-<split>`` row in ``results``: Default mAP
    {full, seen, unseen} of the student trained without the split's unseen classes, of the
    same student trained with them (row ``trained_with``), of the teacher and of chance."""
    by_name = {r["name"]: r for r in results}

    def zs(name: str, split: str) -> dict:
        r = by_name[name]["summary"]["zero_shot"]["default"][split]
        return {k: r[k] for k in ("full", "seen", "unseen")}

    out = []
    for r in results:
        if not r["name"].startswith(UNSEEN_PREFIX):
            continue
        split = r["name"][len(UNSEEN_PREFIX):]
        out.append({"split": split, "setting": r["summary"]["zero_shot"]["default"][split]["setting"],
                    "trained_without": zs(r["name"], split), "trained_with": zs(trained_with, split),
                    "teacher": zs("teacher", split), "chance": zs("chance", split)})
    return out


def format_zero_shot(table: list[dict]) -> str:
    """The zero-shot rows: unseen-class mAP (%) of each model, then the seen classes'."""
    def pct(x) -> str:
        return f"{'-':>9}" if x is None else f"{100 * x:9.2f}"

    models = ("trained_without", "trained_with", "teacher", "chance")
    head = f"{'split':<24}" + "".join(f"{m.replace('_', ' '):>17}" for m in models)
    lines = ["unseen classes, Default mAP (%); in brackets the seen classes'", head, "-" * len(head)]
    for t in table:
        cells = "".join(f"{pct(t[m]['unseen'])} ({pct(t[m]['seen']).strip():>5})" for m in models)
        lines.append(f"{t['setting'] + ' (' + t['split'] + ')':<24}{cells}")
    return "\n".join(lines)
