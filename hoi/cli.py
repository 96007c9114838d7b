"""The ``hoi`` command: thin click wrappers that parse, set up logging and call one function.

Heavy imports (torch, zarr) happen inside the commands so that ``hoi --help`` is instant.
"""

from __future__ import annotations

import sys

import click

from hoi.cli_train import overwrite_option, plot_option, refuse_existing
from hoi.command import TUNED_COMMANDS
from hoi.errors import HoiGroup
from hoi.logs import setup_logging
from hoicore import __version__
from hoicore.memory import exec_with_heap_tunables
from hoicore.options import click_options, take
from hoidata.boxes import BOX_FORMATS
from hoidata.drawing import Drawing
from hoidata.matlab import LAYOUTS


@click.group(cls=HoiGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="hoi")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Zero-shot HOI detection by distilling CLIP at several levels."""
    ctx.meta.update({"hoi.verbose": verbose, "hoi.quiet": int(quiet)})  # a command's own -v / -q add to these
    setup_logging(verbose, quiet)


# -- evaluation -----------------------------------------------------------------------

def ground_truth_options(f):
    """What every command that matches predictions to ground truth takes, declared once."""
    for option in reversed([
        click.option("--annotations", default="hico_det", metavar="FILE|hico_det",
                     help="Ground truth (its image order is the official one): an instances_*.json / QPIC "
                          "test_hico.json / HICO-DET anno_bbox.mat file, or 'hico_det' for the bundled "
                          "HICO-DET test set."),
        click.option("--split", type=click.Choice(["train", "test"]), default="test",
                     help="Split of an anno_bbox.mat / anno.mat (bbox_test / anno_test, or the train ones)."),
        click.option("--labelspace", default=None, metavar="NAME|FILE",
                     help="Label space of the annotations [default: the one the predictions file records, else "
                          "hico_det]; a predictions file that records another is refused."),
        click.option("--box-format", type=click.Choice(BOX_FORMATS), default=None,
                     help="Box convention of the predictions; overrides the file's own 'box_format'."),
        click.option("--ignore-unknown-images", is_flag=True,
                     help="Skip predictions for images not in the annotations (with a warning) instead of failing."),
    ]):
        f = option(f)
    return f


@main.command("eval-predictions")
@click.option("--predictions", "predictions", required=True, type=click.Path(exists=True),
              help="Predictions in the interchange format (.json, .json.gz or .npz), or the official "
                   "evaluation's detection files (a folder of detections_XX.mat, or a detections.mat).")
@ground_truth_options
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (mAP as fractions).")
@click.option("--per-class", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write per-class AP and recall to this JSON file.")
@click.option("--image-labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="HICO-DET's anno.mat: its image-level labels give the Known-Object images, as in the "
                   "official code [default: the anno.mat beside an anno_bbox.mat --annotations; else the "
                   "images holding a ground-truth pair of the object, a stand-in].")
@plot_option
def eval_predictions(annotations, labelspace, split, predictions, box_format, ignore_unknown_images, as_json,
                     per_class, image_labels, plot):
    """HICO-DET mAP of a predictions file, exactly as the official MATLAB code computes it."""
    from hoidata.evaluation import evaluate_file, format_table

    res = evaluate_file(annotations, predictions, labelspace=labelspace, box_format=box_format,
                        ignore_unknown_images=ignore_unknown_images, split=split,
                        image_labels=image_labels or "auto")
    if per_class:
        res.save_per_class(per_class)
    if plot:
        from pathlib import Path

        from hoidata.visualize import plot_result

        plot_result(res, plot, title=f"Per-class AP of {Path(predictions).name}")
    if as_json:
        click.echo(res.summary_json())
    else:
        click.echo(format_table(res))


@main.command("export-mat")
@click.option("--predictions", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Predictions in the interchange format (.json, .json.gz or .npz).")
@ground_truth_options
@click.option("--layout", type=click.Choice(LAYOUTS), default="obj",
              help="'obj': one detections_XX.mat per COCO object; 'all': one detections.mat (eval_one.m reads "
                   "either, by its 'format' setting).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@overwrite_option
def export_mat(predictions, annotations, labelspace, split, layout, box_format, ignore_unknown_images, output,
               overwrite):
    """Write predictions as the official MATLAB evaluation's detection files (ho-rcnn eval_one.m),
    so anyone can confirm our mAP with the official code."""
    from hoidata.matlab import export_file

    info = export_file(predictions, output, annotations=annotations, labelspace=labelspace, layout=layout,
                       box_format=box_format, overwrite=overwrite, ignore_unknown_images=ignore_unknown_images,
                       split=split)
    click.echo(f"{output}: {info['detections']:,} detections on {info['images']:,} images in "
               f"{len(info['files'])} file(s) ({layout} layout, 0-based boxes)")


# How pictures are drawn (hoi visualize, hoi detect --draw), declared once as hoidata.drawing.Drawing.
drawing_options = click_options(Drawing)


@main.command("visualize")
@click.option("--predictions", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Predictions in the interchange format.")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False), help="Images folder.")
@click.option("--labelspace", default=None, metavar="NAME|FILE",
              help="Label space of the predictions [default: the one the file records, else hico_det]; refused "
                   "if the file records another.")
@click.option("--image-name", "names", multiple=True,
              help="Image file name to draw (repeatable) [default: the first --draw-count images with predictions].")
@drawing_options
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the PNG files.")
def visualize(predictions, images, labelspace, names, output, **drawing):
    """Draw images' top HOI detections (human and object boxes, the pair, class and score, a
    legend) to PNG files sized for a slide."""
    from hoicore.files import inside
    from hoidata.predictions import labelspace_of, read_predictions
    from hoidata.visualize import draw_images

    pred = read_predictions(predictions)
    ls = labelspace_of(pred, labelspace, predictions)
    # names from the predictions file are read only inside --images
    for path in draw_images(pred, ls, lambda name: inside(images, name, source=predictions), output,
                            Drawing(**drawing), names):
        click.echo(path)


@main.command("demo")
@click.option("--output", "-o", "out", default="runs/demo", type=click.Path(file_okay=False),
              help="Folder for every output.")
@click.option("--until", type=click.Choice(["teacher-cache", "train", "eval", "all"]), default="all",
              help="Last stage: the caches, the default student trained, it evaluated, or the whole ablation table.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs of each student (default: the demo's own, fewer than the trainer's).")
@click.option("--train-images", type=click.IntRange(min=1), default=2000, help="Images of the minibench train split.")
@click.option("--val-images", type=click.IntRange(min=0), default=600,
              help="Images of the minibench validation split (built, never read by the demo).")
@click.option("--test-images", type=click.IntRange(min=1), default=600, help="Images of the minibench test split.")
@click.option("--seed", type=click.IntRange(min=0), default=0,
              help="Seed of the world (scenes, splits, detections).")
@click.option("--train-seed", type=click.IntRange(min=0), default=0,
              help="Seed of the students (initial weights, data order).")
def demo(out, until, epochs, train_images, val_images, test_images, seed, train_seed):
    """The whole method on the bundled benchmark (minibench), offline: world, teacher cache,
    students, evaluation, one table like the paper's."""
    from hoi.demo import run_demo

    run_demo(out, until=until, epochs=epochs, train_images=train_images, val_images=val_images,
             test_images=test_images, seed=seed, train_seed=train_seed, echo=click.echo)


from hoi.cli_detections import detector_run_options, image_folder_options  # noqa: E402
from hoi.cli_train import scoring_options  # noqa: E402
from hoi.queries import class_query_options  # noqa: E402


@main.command("detect")
@image_folder_options
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False),
              help="The student's checkpoint folder (RUN/checkpoint); its teacher, pair rule and label space are "
                   "used.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Predictions in the interchange format (.json, .json.gz or .npz), with their provenance.")
@click.option("--detector", default=None, metavar="NAME",
              help="A torchvision detection model or tiny-fcos [default: the detector shipped for the "
                   "checkpoint's label space (the bundled benchmark's)].")
@click.option("--detector-weights", type=click.Path(exists=True), default=None,
              help="The detector's weights (see hoi detections run --detector-weights).")
@click.option("--teacher-model", default=None, metavar="NAME|local-dir:FOLDER",
              help="Where the checkpoint's CLIP is now, if it moved [default: the one the checkpoint records].")
@click.option("--teacher-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Its weights file, if they moved; refused unless their sha256 is the checkpoint's.")
@click.option("--draw", type=click.Path(file_okay=False), default=None,
              help="Also draw the top detections of the first --draw-count images into this folder.")
@drawing_options
# not DetectOptions.batch_size: one batch size for the detector, CLIP and the student, with its own default
@click.option("--batch-size", type=click.IntRange(min=1), default=32,
              help="Images per batch through detector, CLIP and student (memory stays flat).")
@scoring_options
@class_query_options
@detector_run_options
@overwrite_option
def detect(images, images_list, checkpoint, output, detector, detector_weights, teacher_model, teacher_weights, draw,
           batch_size, hoi, classes_file, add_classes, overwrite, **options):
    """HOI detections for a folder of photos: detector, CLIP's global pass, the student (no union crops)."""
    from hoi.detect import run_detect
    from hoi.queries import ClassQuery
    from pipeline.detection.options import DetectOptions
    from trainer.config import Scoring

    refuse_existing(output, overwrite)
    drawing, scoring = take(Drawing, options), take(Scoring, options)  # the rest are the detector's
    info = run_detect(images, checkpoint, output, detector=detector, detector_weights=detector_weights,
                      images_list=images_list, draw=draw, drawing=drawing,
                      options=DetectOptions(batch_size=batch_size, **options),
                      scoring=scoring,
                      classes=ClassQuery(hoi, classes_file, add_classes), teacher_model=teacher_model,
                      teacher_weights=teacher_weights)
    rate = info["images_per_s"]
    skipped = len(info["skipped_images"])
    scored = info["num_images"] - skipped
    click.echo(f"wrote {info['num_predictions']:,} predictions for {scored:,} images to {output} "
               + (f"({skipped:,} skipped: unreadable, listed in its provenance) " if skipped else "")
               + f"({rate['total']} images/s: detector {rate['detector']}, CLIP {rate['clip']}, student "
               f"{rate['student']})")


from hoi.cli_cache import cache_group, rescore, teacher_cache  # noqa: E402
from hoi.cli_detections import detections  # noqa: E402
from hoi.cli_train import ablate_cmd, eval_cmd, predict_cmd, train_cmd  # noqa: E402

for command in (detections, teacher_cache, rescore, cache_group, train_cmd, predict_cmd, eval_cmd, ablate_cmd):
    main.add_command(command)


def run() -> None:
    """The ``hoi`` program (its console script and ``python -m hoi``): the commands of
    :data:`hoi.command.TUNED_COMMANDS` restarted once with glibc's heap tunables
    (:data:`hoicore.memory.HEAP_TUNABLES`: without them a long training or teacher run's heap
    grows with the steps it has run), then :func:`main`."""
    args = sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), None)  # the group's own options take no value
    if command in TUNED_COMMANDS:
        exec_with_heap_tunables([sys.executable, "-c", RESTART, *args])
    main(prog_name="hoi")  # usage lines say what the user typed, `python -m hoi` or not


# The restarted interpreter: `-c` puts the working folder first on sys.path (as `-m` would), so
# it is dropped before anything is imported: a folder holding a `hoi/` or `numpy.py` never runs.
RESTART = "import sys; del sys.path[0]; sys.argv[0] = 'hoi'; from hoi.cli import run; run()"


if __name__ == "__main__":  # pragma: no cover
    run()
