"""The evaluator and the predictions reader against their baselines, on synthetic predictions
for the HICO-DET test images (``python -m bench --only eval|read``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np

from bench.child import PEAK_RSS, run_json
from hoidata.annotations import hico_test_annotations
from hoidata.evaluation import evaluate
from hoidata.labelspace import hico_det
from hoidata.predictions import Predictions, write_predictions
from hoidata.reference_eval import reference_evaluate


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
import json, sys, time
from hoidata import predictions as P
if sys.argv[2] == "json.load":  # the reader kept for files the fast one does not take
    P._read_json_fast = lambda path, box_format: None
t = time.perf_counter()
pred = P.read_predictions(sys.argv[1])
seconds = time.perf_counter() - t
""" + PEAK_RSS + """
print(json.dumps({"seconds": seconds, "peak_mb": peak, "rows": len(pred)}))
"""


def _read_in_child(path, how: str) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB or a negative number where unknown, rows) of
    read_predictions(path) in a fresh process."""
    got = run_json(_READ_ONE, path, how)
    return got["seconds"], got["peak_mb"], got["rows"]


def bench_predictions_read(num: int) -> None:
    """read_predictions on the same rows as .json, .json.gz and .npz, each in a fresh
    process: seconds and peak RSS; the baseline is the json.load reader."""
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
