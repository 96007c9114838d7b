"""``hoi train``, ``hoi predict``, ``hoi eval``, ``hoi ablate``: the student's commands.

Thin wrappers: parse, call one function of :mod:`trainer`, print. The training options
are generated from :class:`trainer.config.TrainConfig` (declared once, there), and the
prediction options by one decorator, so every command that shares an option spells it
the same way. Register them on the ``hoi`` group with ``main.add_command``.
"""

from __future__ import annotations

import json

import click

from hoi.command import HoiCommand
from hoi.queries import ClassQuery, cache_classes, class_query_options
from hoicore.options import click_options
from trainer.config import PREDICTION_MODELS, Scoring, TrainConfig

# One option per training-config field, declared once there. Defaults are None so that only
# the options given override the config (the defaults, or a resumed run's own).
training_options = click_options(TrainConfig, given_only=True)


def _given(options: dict, config_file=None) -> dict:
    """The training fields set: those of ``--config FILE``, then the options given over them."""
    from trainer.config import read_config_file

    from_file = read_config_file(config_file) if config_file else {}
    return {**from_file, **{k: v for k, v in options.items() if v is not None}}


config_file_option = click.option(
    "--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Training settings from a JSON or YAML file of TrainConfig fields (e.g. the 'config' of a checkpoint's "
         "checkpoint.json); the options given on the command line override it.")


# How pair rows are scored from the student's branches: shared by every command that predicts
# (on a cache here, from photos in ``hoi detect``); declared once, as trainer.config.Scoring.
scoring_options = click_options(Scoring)


def prediction_options(f):
    """What every command that predicts on a cache takes."""
    opts = [
        click.option("--cache", "cache", required=True, type=click.Path(exists=True, file_okay=False),
                     help="Teacher cache of the split to predict on."),
        click.option("--scorer", "model", type=click.Choice(PREDICTION_MODELS), default="student",
                     help="A trained student, the teacher alone (CLIP on union boxes), CLIP's dense map pooled "
                          "over the union boxes (dense: an untrained --residual student) or random scores."),
        click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), default=None,
                     help="The student's checkpoint folder (RUN/checkpoint); with --scorer student."),
        click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None, show_default=False,
                     help="Softmax temperature of the teacher baseline's union scores.  [default: 0.01]"),
        click.option("--batch-size", type=click.IntRange(min=1), default=64,
                     help="Images per forward pass of the student."),
        click.option("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."),
        click.option("--seed", type=int, default=0, help="Seed of the random baseline."),
    ]
    f = scoring_options(f)  # listed last
    for opt in reversed(opts):
        f = opt(f)
    return f


def _predict_kwargs(o: dict) -> dict:
    keys = ("model", "checkpoint", "det_exponent", "top_k", "temperature", "batch_size", "device", "seed",
            "union_weight")
    return {k: o[k] for k in keys}


labelspace_option = click.option(
    "--labelspace", default=None, metavar="NAME|FILE",
    help="Label space of the test split (Rare classes, zero-shot splits).  [default: the cache's dataset.labelspace]")
plot_option = click.option(
    "--plot", type=click.Path(dir_okay=False, writable=True), default=None,
    help="Also draw the per-class AP (Default setting; classes sorted by AP, Rare ones marked) to this PNG.")
image_labels_option = click.option(
    "--image-labels", type=click.Path(exists=True, dir_okay=False), default=None,
    help="HICO-DET's anno.mat: its image-level labels decide the Known-Object images, as in the official code "
         "[default: the images holding a ground-truth pair of the object, a stand-in; results say which].")


@click.command("train", cls=HoiCommand, context_settings={"show_default": True})
@click.option("--cache", required=True, type=click.Path(exists=True, file_okay=False), help="Training teacher cache.")
@click.option("--output", "-o", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: metrics.jsonl, checkpoint/.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its checkpoint (same cache only).")
@config_file_option
@training_options
def train_cmd(cache, out, resume, config_file, **options):
    """Train the student on a teacher cache (never runs CLIP)."""
    from trainer.engine import train

    m = train(cache, out, resume=resume, **_given(options, config_file))
    click.echo(f"epoch {m['epoch']}: loss {m['loss']:.4f}, {m['pairs_per_s']:,.0f} pairs/s; "
               f"checkpoint {m['checkpoint']}")


# Every command that writes one output file refuses to replace it unless told to.
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace --output if it exists (without this, an existing one is refused).")


def refuse_existing(output, overwrite: bool) -> None:
    """One line, before any work, when ``output`` exists and ``--overwrite`` was not given."""
    from pathlib import Path

    if Path(output).exists() and not overwrite:
        raise click.UsageError(f"{output} exists; pass --overwrite to replace it, or choose another --output")


@click.command("predict", cls=HoiCommand, context_settings={"show_default": True})
@prediction_options
@class_query_options
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Predictions file in the evaluator's format (.json, .json.gz or .npz).")
@overwrite_option
def predict_cmd(output, hoi, classes_file, add_classes, overwrite, **options):
    """Write predictions for every pair of a cached split."""
    from trainer.predict import predict_file

    refuse_existing(output, overwrite)
    classes = cache_classes(options["cache"], ClassQuery(hoi, classes_file, add_classes))
    info = predict_file(options["cache"], output, classes=classes, **_predict_kwargs(options))
    click.echo(f"wrote {info['num_predictions']:,} predictions ({info['model']}) to {output}")


@click.command("eval", cls=HoiCommand, context_settings={"show_default": True})
@prediction_options
@class_query_options
@labelspace_option
@image_labels_option
@click.option("--output", "-o", "results", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the results JSON (the evaluator's summary plus what made the predictions) here.")
@click.option("--save-predictions", "predictions", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the predictions here (.json, .json.gz or .npz).")
@click.option("--json", "as_json", is_flag=True, help="Print the results JSON instead of the table.")
@plot_option
def eval_cmd(labelspace, image_labels, results, predictions, as_json, plot, hoi, classes_file, add_classes, **options):
    """Predict on a test cache and print its HICO-DET mAP (ground truth from the cache)."""
    from hoidata.evaluation import format_table
    from trainer.predict import run_eval

    classes = cache_classes(options["cache"], ClassQuery(hoi, classes_file, add_classes), labelspace)
    res, report = run_eval(options["cache"], results=results, predictions=predictions, labelspace=labelspace,
                           image_labels=image_labels, classes=classes, **_predict_kwargs(options))
    if plot:
        from pathlib import Path

        from hoidata.visualize import plot_result

        plot_result(res, plot, title=f"Per-class AP: {report['model']} on {Path(options['cache']).name}")
    click.echo(json.dumps(report, indent=1) if as_json else f"model: {report['model']}\n{format_table(res)}")


@click.command("ablate", cls=HoiCommand, context_settings={"show_default": True})
@click.option("--train-cache", required=True, type=click.Path(exists=True, file_okay=False),
              help="Training teacher cache.")
@click.option("--test-cache", required=True, type=click.Path(exists=True, file_okay=False),
              help="Test teacher cache (with ground truth).")
@click.option("--output", "-o", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for one run per row, the results and ablation.json.")
@click_options(Scoring, only=("det_exponent",))
@click.option("--jobs", type=click.IntRange(min=1), default=1,
              help="Rows trained and evaluated at once, each in a process of its own. Give --threads too "
                   "(e.g. 1 each): a row's numbers then do not depend on --jobs or on the machine's cores.")
@click.option("--references", is_flag=True,
              help="Also train the weakly and fully supervised references (the all-levels student on image "
                   "and on pair HOI labels; the train cache needs its ground truth: teacher-cache --annotations).")
@labelspace_option
@image_labels_option
@config_file_option
@training_options
def ablate_cmd(train_cache, test_cache, out, det_exponent, references, labelspace, image_labels, jobs, config_file,
               **options):
    """Train and evaluate the paper's ablation grid; print one table."""
    from trainer.ablate import GRID, LABELLED_ROWS, ablate, format_ablation
    from trainer.config import TrainConfig

    rows = ablate(train_cache, test_cache, out, TrainConfig().replace(**_given(options, config_file)),
                  rows=GRID + (LABELLED_ROWS if references else ()),
                  det_exponent=det_exponent, labelspace=labelspace, image_labels=image_labels, jobs=jobs)
    click.echo(format_ablation(rows))
