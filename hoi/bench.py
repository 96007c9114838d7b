"""``make bench``: speed ratios measured in one run, ours against a baseline on the same input.

Only ratios and rates are printed; nothing here is asserted (speed lives here, not in tests).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np


def _timed(fn, *args, repeat: int = 1, **kw):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kw)
        best = min(best, time.perf_counter() - t)
    return best, out


def synthetic_hico_predictions(num: int, seed: int = 0):
    """``num`` predictions on the HICO-DET test images: jittered ground-truth pairs, half with
    a random class, scores on a coarse grid so that ties occur (as with real detectors)."""
    from hoidata.annotations import hico_test_annotations
    from hoidata.predictions import Predictions

    gt = hico_test_annotations()
    rng = np.random.default_rng(seed)
    src = rng.integers(0, gt.num_pairs, num)
    img = gt.image_of_pair[src]
    jitter = lambda b: b + rng.normal(0, 8, b.shape).round()  # noqa: E731
    hoi = np.where(rng.random(num) < 0.5, gt.hoi[src], rng.integers(0, 600, num))
    order = np.argsort(img, kind="stable")
    pred = Predictions.from_arrays(gt.file_names, img[order], jitter(gt.boxes_h[src])[order],
                                   jitter(gt.boxes_o[src])[order], hoi[order], rng.random(num).round(3)[order])
    return gt, pred


def bench_evaluator(num: int, baseline_classes: int) -> None:
    from hoidata.evaluation import evaluate
    from hoidata.labelspace import hico_det
    from hoidata.reference_eval import reference_evaluate

    ls = hico_det()
    gt, pred = synthetic_hico_predictions(num)
    t_ours, res = _timed(evaluate, gt, pred, ls, repeat=3)
    classes = np.linspace(0, ls.num_classes - 1, baseline_classes).astype(int)
    t_ref, ref = _timed(reference_evaluate, gt, pred, ls, classes=classes)
    assert np.array_equal(ref[classes], res.ap["default"][classes]), "evaluator disagrees with the reference port"
    # the baseline ran `baseline_classes` of 600 classes of one setting; scale to both settings
    t_ref_full = t_ref * ls.num_classes / len(classes) * 2
    click.echo(f"evaluator: {num:,} predictions on {len(gt):,} images (Default + Known-Object)")
    click.echo(f"  vectorised            {t_ours:8.2f} s")
    click.echo(f"  per-class loop        {t_ref_full:8.2f} s  (port of the MATLAB loops; {len(classes)} classes "
               f"timed, scaled to 600 x 2 settings; same Default APs)")
    click.echo(f"  speed-up              {t_ref_full / t_ours:8.1f} x")


_READ_ONE = """
import sys, time
from hoidata import predictions as P
if sys.argv[2] == "json.load":  # the reader kept for files the fast one does not take
    P._read_json_fast = lambda path, box_format: None
t = time.perf_counter()
pred = P.read_predictions(sys.argv[1])
seconds = time.perf_counter() - t
try:  # VmHWM: this process's own peak (ru_maxrss keeps the parent's across fork and exec)
    peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    peak = -1
print(seconds, peak, len(pred))
"""


def _read_in_child(path, how: str) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB or a negative number where unknown, rows) of
    read_predictions(path) in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _READ_ONE, str(path), how], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024, int(out[2])


def bench_predictions_read(num: int) -> None:
    """read_predictions on the same rows as .json, .json.gz and .npz, each in a fresh
    process: seconds and peak RSS; the baseline is the json.load reader."""
    from hoidata.predictions import write_predictions

    _, pred = synthetic_hico_predictions(num)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {s: Path(tmp) / f"preds{s}" for s in (".npz", ".json", ".json.gz")}
        for p in paths.values():
            write_predictions(pred, p)
        del pred
        mb = paths[".json"].stat().st_size / 2**20
        runs = [("json", ".json", "fast"), ("json.gz", ".json.gz", "fast"), ("npz", ".npz", "fast"),
                ("json via json.load", ".json", "json.load")]
        res = {name: _read_in_child(paths[suffix], how) for name, suffix, how in runs}
    assert len({r[2] for r in res.values()}) == 1, "the readers disagree on the number of rows"
    click.echo(f"predictions read: {num:,} rows ({mb:,.0f} MB of JSON), read_predictions in a fresh process")
    for name, (sec, peak, _) in res.items():
        click.echo(f"  {name:21s} {sec:8.2f} s  " + (f"{peak:8,.0f} MB peak RSS" if peak >= 0 else "peak RSS n/a"))
    (tj, mj, _), (tn, mn, _), (tr, mr, _) = res["json"], res["npz"], res["json via json.load"]
    known = mj > 0 and mn > 0 and mr > 0
    click.echo(f"  json / npz            {tj / tn:8.1f} x time" + (f"  {mj / mn:6.2f} x memory" if known else ""))
    click.echo(f"  json.load / json      {tr / tj:8.1f} x time" + (f"  {mr / mj:6.2f} x memory" if known else ""))


def bench_detect(demo: str = "runs/demo", pairs_at: int = 40) -> None:
    """``hoi detect`` on the bundled benchmark's test images (after ``make demo``): images/s
    and its split, and the student path's cost per image (CLIP's global pass + the student)
    against the teacher path (global pass + CLIP on every union crop) on the same images and
    pairs, as measured and extrapolated to ``pairs_at`` candidate pairs per image (HICO-DET's)."""
    import tempfile
    import time
    from pathlib import Path

    from cache.store import open_cache
    from hoi.demo import demo_paths, demo_teacher
    from hoi.detect import run_detect
    from hoidata.labelspace import LabelSpace
    from minibench.build import layout
    from pipeline.detect_options import DetectOptions
    from pipeline.options import RunOptions
    from pipeline.run import build_teacher_cache

    p = demo_paths(demo)
    checkpoint = p["ablation"] / "all-late" / "checkpoint"
    if not checkpoint.is_dir():
        click.echo(f"hoi detect: skipped ({checkpoint} is missing: run make demo first)")
        return
    w = layout(p["world"])
    ls = LabelSpace.load(w["labelspace"])
    with tempfile.TemporaryDirectory() as tmp:
        info = run_detect(w["images_test"], checkpoint, Path(tmp) / "p.npz", options=DetectOptions(progress=False))
        n, pairs = info["num_images"], info["num_pairs"]
        sec = info["seconds"]
        timed = {}
        for levels in ("global", "all"):  # the same images and detections, one shard, no helper processes
            t0 = time.perf_counter()
            build_teacher_cache(Path(tmp) / f"{levels}.zarr", images=w["images_test"], detections=w["detections_test"],
                                labelspace=ls, teacher=demo_teacher(),
                                run=RunOptions(levels=levels, images_per_shard=1024, threads=1, progress=False))
            timed[levels] = time.perf_counter() - t0
        crops = open_cache(Path(tmp) / "all.zarr").layout["num_pairs"]
    rate = info["images_per_s"]
    click.echo(f"hoi detect on {n} test images ({pairs / n:.1f} pairs an image): {rate['total']:.1f} images/s "
               f"(detector {rate['detector']:.1f}, CLIP global pass {rate['clip']:.1f}, student {rate['student']:.1f})")
    global_ms = 1000 * sec["clip"] / n
    student_ms_pair = 1000 * sec["student"] / max(pairs, 1)
    crop_ms = 1000 * max(timed["all"] - timed["global"], 0) / max(crops, 1)
    for k, label in ((pairs / n, "measured"), (pairs_at, "HICO-DET's")):
        student, teacher = global_ms + k * student_ms_pair, global_ms + k * crop_ms
        click.echo(f"  at {k:.0f} pairs an image ({label}): student path {student:.1f} ms, teacher path "
                   f"{teacher:.1f} ms per image: {teacher / student:.1f}x cheaper")
    click.echo(f"  (teacher cache of the same images: {timed['global']:.1f} s with --levels global, "
               f"{timed['all']:.1f} s with every union crop; {crop_ms:.2f} ms a crop)")


@click.command()
@click.option("--predictions", "num", type=click.IntRange(min=1000), default=1_000_000,
              help="Number of synthetic predictions (evaluator and predictions-read benches).")
@click.option("--baseline-classes", type=click.IntRange(1, 600), default=30,
              help="Classes the slow baseline is timed on.")
@click.option("--only", type=click.Choice(["all", "eval", "read", "teacher", "trainer", "detect"]), default="all",
              help="Which stage to time.")
@click.option("--teacher-images", type=click.IntRange(min=1), default=64, help="Images in the teacher-cache bench.")
@click.option("--model", default=None, help="open_clip model of the teacher bench (default: ViT-B-16 on a GPU, "
                                            "a small ViT on the CPU); random weights.")
@click.option("--teacher-run", multiple=True, metavar="NAME=VALUE",
              help="A run option of the teacher-cache pipeline, repeatable: workers=16, decode=threads, "
                   "writer=process, images_per_shard=1024, batch_size=64, crop_batch=512, threads=2, ...")
@click.option("--teacher-variant", multiple=True, metavar="'NAME=VALUE ...'",
              help="One more teacher-cache run on the same images with these run options changed, repeatable: "
                   "--teacher-variant 'threads=2' --teacher-variant 'threads=2 images_per_shard=1024'.")
def main(num: int, baseline_classes: int, only: str, teacher_images: int, model: str | None,
         teacher_run: tuple[str, ...], teacher_variant: tuple[str, ...]) -> None:
    """Print speed ratios of hoi-distill's stages against their baselines."""
    from hoi.logs import setup_logging

    setup_logging(quiet=True)
    if only in ("all", "eval"):
        bench_evaluator(num, baseline_classes)
    if only in ("all", "read"):
        bench_predictions_read(num)
    if only in ("all", "teacher"):
        from pipeline.bench import bench_teacher, parse_run_overrides
        from pipeline.options import RunOptions
        try:
            run = parse_run_overrides(list(teacher_run))
            variants = [parse_run_overrides(v.replace(",", " ").split()) for v in teacher_variant]
            for v in [run, *({**run, **v} for v in variants)]:
                RunOptions(**v)  # range and choice checks before anything runs
        except ValueError as e:
            raise click.BadParameter(str(e)) from e
        bench_teacher(model=model, num_images=teacher_images, run=run, variants=variants, echo=click.echo)
    if only in ("all", "trainer"):
        from trainer.bench import bench_trainer
        bench_trainer(echo=click.echo)
    if only in ("all", "detect"):
        bench_detect()


if __name__ == "__main__":
    main()
