"""The ``hoi`` command: thin click wrappers that parse, set up logging and call one function.

Heavy imports (torch, zarr) happen inside the commands so that ``hoi --help`` is instant.
"""

from __future__ import annotations

import sys

import click

from hoi.logs import setup_logging
from hoidata import __version__


class UserError(click.ClickException):
    """An error the user can fix; printed without a traceback."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="hoi")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(verbose: int, quiet: bool) -> None:
    """Zero-shot HOI detection by distilling CLIP at several levels."""
    setup_logging(verbose, quiet)


# -- evaluation -----------------------------------------------------------------------

@main.command("eval-predictions")
@click.option("--annotations", "annotations", default="hico_det", metavar="FILE|hico_det",
              help="Ground truth: an instances_*.json / QPIC test_hico.json file, or 'hico_det' for "
                   "the bundled HICO-DET test set.")
@click.option("--labelspace", default="hico_det", metavar="NAME|FILE", help="Label space of the annotations.")
@click.option("--predictions", "predictions", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Predictions in the interchange format (.json, .json.gz or .npz).")
@click.option("--box-format", type=click.Choice(["pixel0", "pixel1", "coord"]), default=None,
              help="Box convention of the predictions; overrides the file's own 'box_format'.")
@click.option("--ignore-unknown-images", is_flag=True,
              help="Skip predictions for images not in the annotations (with a warning) instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (mAP as fractions).")
@click.option("--per-class", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write per-class AP and recall to this JSON file.")
def eval_predictions(annotations, labelspace, predictions, box_format, ignore_unknown_images, as_json, per_class):
    """HICO-DET mAP of a predictions file, exactly as the official MATLAB code computes it."""
    from hoidata.evaluation import evaluate_file, format_table

    try:
        res = evaluate_file(annotations, predictions, labelspace=labelspace, box_format=box_format,
                            ignore_unknown_images=ignore_unknown_images)
    except ValueError as e:
        raise UserError(str(e)) from e
    if per_class:
        res.save_per_class(per_class)
    if as_json:
        click.echo(res.summary_json())
    else:
        click.echo(format_table(res))


from hoi.cli_cache import cache_group, teacher_cache  # noqa: E402
from hoi.cli_detections import detections  # noqa: E402
from hoi.cli_train import ablate_cmd, eval_cmd, predict_cmd, train_cmd  # noqa: E402

for command in (detections, teacher_cache, cache_group, train_cmd, predict_cmd, eval_cmd, ablate_cmd):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
