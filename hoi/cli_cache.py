"""``hoi teacher-cache`` and ``hoi cache inspect|verify``: thin wrappers over pipeline and cache."""

from __future__ import annotations

import click

from hoi.command import HoiCommand
from hoi.errors import HoiGroup
from hoicore.options import click_options
from hoidata.annotations import SPLITS
from hoidata.boxes import CROP_MODES
from hoidata.errors import InputError
from hoidata.pairs import PairRule
from pipeline.options import RunOptions, TeacherOptions

# The defaults of the teacher and the pair rule are their dataclasses' (declared once, there).
_TEACHER, _PAIRS = TeacherOptions(model=""), PairRule()


# One option per field of RunOptions, declared once there.
run_options = click_options(RunOptions)


@click.command("teacher-cache", cls=HoiCommand)
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder with the split's images (file names as in the detections file).")
@click.option("--detections", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Detections of the split (HDF5, from `hoi detections import`).")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Ground truth, for test splits: stored in the cache so evaluation needs only the cache.")
@click.option("--labelspace", default="hico_det", metavar="NAME|FILE", help="Label space of the dataset.")
@click.option("--teacher-model", "model", required=True, metavar="NAME|local-dir:FOLDER",
              help="The CLIP: an open_clip model name (ViT-B-16-quickgelu for OpenAI weights), or local-dir:FOLDER.")
@click.option("--pretrained", default=None, help="Pretrained tag (weights must already be cached: nothing is "
                                                 "downloaded) or a checkpoint file.")
@click.option("--model-config", multiple=True, type=click.Path(exists=True),
              help="Register an open_clip model config (JSON file or folder) before loading --teacher-model.")
@click.option("--template", "templates", multiple=True, default=("{}",),
              help="Prompt template, repeatable: '{}' is the label space's prompt as written; others get its "
                   "description, e.g. 'a photo of {}.'. Embeddings are averaged over templates.")
@click.option("--crop-mode", type=click.Choice(CROP_MODES), default=_TEACHER.crop_mode,
              help="How a non-square box becomes the square encoder input.")
@click.option("--union-margin", type=click.FloatRange(min=0), default=_TEACHER.union_margin,
              help="Grow union boxes by this fraction per side (context).")
@click.option("--global-size", type=click.IntRange(min=1), default=None,
              help="Input size of the global pass (dense map of global-size/patch tokens a side); default: "
                   "the model's.")
@click.option("--human-score", type=click.FloatRange(0, 1), default=_PAIRS.human_score,
              help="Pair rule: minimum person detection score.")
@click.option("--object-score", type=click.FloatRange(0, 1), default=_PAIRS.object_score,
              help="Pair rule: minimum object detection score.")
@click.option("--max-humans", type=click.IntRange(min=1), default=_PAIRS.max_humans,
              help="Pair rule: humans per image.")
@click.option("--max-objects", type=click.IntRange(min=1), default=_PAIRS.max_objects,
              help="Pair rule: objects per image.")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Which split the images are, recorded in the cache (hoi train refuses a test split); default: "
                   "what HICO-DET's file names say (HICO_train2015_*, HICO_test2015_*), else not recorded.")
@run_options
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="The Zarr store to write (PATH.wip while in progress).")
def teacher_cache(images, detections, annotations, labelspace, model, pretrained, model_config, templates,
                  crop_mode, union_margin, global_size, human_score, object_score, max_humans, max_objects, split,
                  output, **run):
    """Run a frozen CLIP once over every image and union box of a split into a Zarr cache."""
    from hoidata.labelspace import LabelSpace
    from pipeline.run import build_teacher_cache

    final = build_teacher_cache(
        output, images=images, detections=detections, annotations=annotations,
        labelspace=LabelSpace.load(labelspace),
        teacher=TeacherOptions(model=model, pretrained=pretrained, templates=tuple(templates),
                               crop_mode=crop_mode, union_margin=union_margin, global_size=global_size),
        pair_rule=PairRule(human_score, object_score, max_humans, max_objects),
        run=RunOptions(**run), model_configs=model_config, split=split)
    click.echo(f"teacher cache: {final}")


@click.command("rescore", cls=HoiCommand)
@click.argument("cache", type=click.Path(exists=True, file_okay=False))
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON list of one prompt per HOI class (default: the label space's).")
@click.option("--template", "templates", multiple=True, default=("{}",),
              help="Prompt template, repeatable (as in teacher-cache); embeddings averaged over templates.")
@click.option("--model-config", multiple=True, type=click.Path(exists=True),
              help="Register an open_clip model config before loading the cache's model.")
@click.option("--device", default="cpu", help="Device of the text encoder.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="The new store.")
def rescore(cache, prompts, templates, model_config, device, output):
    """Score a new prompt set against a finished cache without running the image encoder."""
    from hoidata.files import load_json
    from pipeline.clip import register_model_configs
    from pipeline.rescore import rescore as run

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
