"""``hoi teacher-cache`` and ``hoi cache inspect|verify``: thin wrappers over pipeline and cache."""

from __future__ import annotations

import click

from hoi.command import HoiCommand
from hoi.errors import HoiGroup
from hoicore.errors import InputError
from hoicore.options import click_options, take
from hoidata.annotations import SPLITS
from hoidata.pairs import PairRule
from pipeline.teacher.options import TEACHER_CLI, RunOptions, TeacherOptions

# One option per field of RunOptions, TeacherOptions (but mean and std) and PairRule, declared once there.
run_options = click_options(RunOptions)
teacher_options = click_options(TeacherOptions, only=TEACHER_CLI)
pair_rule_options = click_options(PairRule)


@click.command("teacher-cache", cls=HoiCommand)
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder with the split's images (file names as in the detections file).")
@click.option("--detections", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Detections of the split (HDF5, from `hoi detections import`).")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ground truth, for test splits: stored in the cache so evaluation needs only the cache.")
@click.option("--labelspace", default="hico_det", metavar="NAME|FILE", help="Label space of the dataset.")
@teacher_options
@click.option("--model-config", multiple=True, type=click.Path(exists=True),
              help="Register an open_clip model config (JSON file or folder) before loading --teacher-model.")
@pair_rule_options
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Which split the images are, recorded in the cache (hoi train refuses a test split); default: "
                   "what HICO-DET's file names say (HICO_train2015_*, HICO_test2015_*), else not recorded.")
@run_options
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="The Zarr store to write (PATH.wip while in progress).")
def teacher_cache(images, detections, annotations, labelspace, model_config, split, output, **options):
    """Run a frozen CLIP once over every image and union box of a split into a Zarr cache."""
    from hoidata.labelspace import LabelSpace
    from pipeline.teacher.run import build_teacher_cache

    teacher, pair_rule = take(TeacherOptions, options), take(PairRule, options)
    final = build_teacher_cache(output, images=images, detections=detections, annotations=annotations,
                                labelspace=LabelSpace.load(labelspace), teacher=teacher, pair_rule=pair_rule,
                                run=take(RunOptions, options), model_configs=model_config, split=split)
    click.echo(f"teacher cache: {final}")


@click.command("rescore", cls=HoiCommand)
@click.argument("cache", type=click.Path(exists=True, file_okay=False))
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON list of one prompt per HOI class (default: the label space's).")
@click_options(TeacherOptions, only=("templates",))
@click.option("--model-config", multiple=True, type=click.Path(exists=True),
              help="Register an open_clip model config before loading the cache's model.")
@click.option("--device", default="cpu", help="Device of the text encoder.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="The new store.")
def rescore(cache, prompts, templates, model_config, device, output):
    """Score a new prompt set against a finished cache without running the image encoder."""
    from hoicore.files import load_json
    from pipeline.teacher.clip import register_model_configs
    from pipeline.teacher.rescore import rescore as run

    register_model_configs(model_config)
    plist = load_json(prompts, ValueError, "prompts") if prompts else None
    if plist is not None and not (isinstance(plist, list) and all(isinstance(p, str) for p in plist)):
        raise InputError(f"{prompts}: expected a JSON list of prompt strings, one per HOI class")
    final = run(cache, output, prompts=plist, templates=tuple(templates), device=device)
    click.echo(f"rescored cache: {final}")


@click.group("cache", cls=HoiGroup)
def cache_group() -> None:
    """Inspect and verify teacher caches."""


@cache_group.command("inspect")
@click.argument("path", type=click.Path(exists=False, file_okay=False))
def inspect(path):
    """Print a store's attributes, arrays, sizes and completion (a .wip store too)."""
    from cache.store import open_cache

    click.echo(open_cache(path, require_complete=False, check_chunks=False).describe())


@cache_group.command("verify")
@click.argument("path", type=click.Path(exists=False, file_okay=False))
def verify(path):
    """Read every chunk of every array of a store (checking its checksum) and check that the store is
    complete and consistent; exit 1 with the problems otherwise."""
    from cache.store import open_cache

    # lost chunks are reported with the rest, not refused on open
    problems = open_cache(path, require_complete=False, check_chunks=False).verify()
    if problems:
        raise click.ClickException("; ".join(problems))
    click.echo(f"{path}: complete and consistent (every chunk read and its checksum checked)")
