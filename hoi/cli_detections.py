"""``hoi detections``: run a detector over images, or import an off-the-shelf detector's boxes,
into one HDF5 file; and inspect it.

Thin wrappers: parse, call :mod:`pipeline.detection.stage` or :mod:`hoidata.detections`, print.
Logging is set up by the parent ``hoi`` group.
"""

from __future__ import annotations

import json

import click

from hoi.errors import HoiGroup
from hoicore.options import click_options
from pipeline.detection.options import DetectOptions


@click.group(cls=HoiGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def detections() -> None:
    """Object detections (from a COCO detector) for the zero-shot setting."""


@detections.command("import")
@click.option("--coco-results", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A COCO results JSON: [{image_id, category_id, bbox: [x, y, w, h], score}].")
@click.option("--folder", type=click.Path(exists=True, file_okay=False), default=None,
              help="A folder with one JSON per image ({boxes (x1 y1 x2 y2), scores, labels, size}), named "
                   "like the image with .json.")
@click.option("--images-list", "images", default="hico_det", metavar="FILE|hico_det",
              help="The image list: an annotation file (either format), a COCO image-info JSON, or "
                   "'hico_det' for the bundled HICO-DET test set.")
@click.option("--image-id", type=click.Choice(["index", "filename"]), default="filename",
              help="What a result's image_id means for an annotation-file image list: the 0-based position, "
                   "or the number in the file name (HICO_test2015_00000123.jpg -> 123).")
@click.option("--labelspace", default="hico_det", metavar="NAME|FILE", help="Label space of the dataset.")
@click.option("--category-ids", type=click.Choice(["coco91", "coco80", "dataset"]), default=None,
              help="Class ids in the input: COCO category ids (coco91), 0-based COCO-80 indices (coco80), or "
                   "dataset object indices (dataset, --folder only). Default: coco91 for --coco-results, "
                   "coco80 for --folder.")
@click.option("--score-threshold", type=float, default=0.0, help="Drop detections scoring below this.")
@click.option("--detector", default="", show_default=False, help="Detector name, recorded in the file.")
@click.option("--detector-weights", "weights", default="", show_default=False,
              help="Detector weights (file name, URL or hash), recorded in the file.")
@click.option("--nms", default="", show_default=False, help="NMS settings used by the detector, recorded in the file.")
@click.option("--ignore-unknown-images", "skip_unknown_images", is_flag=True,
              help="Skip results for image ids not in the image list instead of failing (--coco-results).")
@click.option("--missing-ok", is_flag=True,
              help="Treat an image without a file as one without detections instead of failing (--folder).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The detections file to write (.h5).")
def import_cmd(coco_results, folder, images, image_id, labelspace, category_ids, score_threshold, detector,
               weights, nms, skip_unknown_images, missing_ok, output):
    """Import detections into one HDF5 file that records where they came from."""
    from hoidata import detections as D
    from hoidata.labelspace import LabelSpace

    if (coco_results is None) == (folder is None):
        raise click.UsageError("give exactly one of --coco-results and --folder")
    if coco_results and category_ids == "dataset":
        raise click.UsageError("--category-ids dataset is for --folder only")
    ls = LabelSpace.load(labelspace)
    image_list = D.load_image_list(images, ls, image_id)
    common = dict(score_threshold=score_threshold, detector=detector, weights=weights, nms=nms)
    if coco_results:
        dets = D.import_coco_results(coco_results, image_list, ls, category_ids=category_ids or "coco91",
                                     skip_unknown_images=skip_unknown_images, **common)
    else:
        dets = D.import_per_image_folder(folder, image_list, ls, labels=category_ids or "coco80",
                                         missing_ok=missing_ok, **common)
    D.save_detections(dets, output)
    click.echo(D.summary(dets))
    click.echo(f"wrote {output}")


@detections.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--labelspace", default=None, metavar="NAME|FILE",
              help="Also check the file against this label space.")
def inspect_cmd(file, labelspace):
    """Print a detections file's provenance and counts."""
    from hoidata import detections as D
    from hoidata.labelspace import LabelSpace

    dets = D.load_detections(file, LabelSpace.load(labelspace) if labelspace else None)
    for key, value in sorted(dets.attrs.items()):
        click.echo(f"{key:24s}{value if isinstance(value, str) else json.dumps(value)}")
    click.echo(D.summary(dets))


def image_folder_options(f):
    """--images and --images-list, declared once for every command that reads a folder of photos."""
    opts = [
        click.option("--images", required=True, type=click.Path(exists=True, file_okay=False),
                     help="Folder of images: its JPEG and PNG files, sorted by name (or those of --images-list)."),
        click.option("--images-list", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Which images of --images, in this order: an annotation file or COCO image-info JSON "
                          "(sizes checked too), or a text file of file names, one a line."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


# One option per field of DetectOptions, declared once there. How a detector runs is shared by
# ``hoi detections run`` and ``hoi detect``; batching, chunking and overwriting are the run's own
# (``hoi detect`` batches the detector, CLIP and the student alike, and neither chunks nor resumes).
_RUN_OWN = ("batch_size", "chunk_size", "overwrite")
detector_run_options = click_options(DetectOptions, exclude=_RUN_OWN)


@detections.command("run")
@image_folder_options
@click.option("--detector", "model", required=True, metavar="NAME",
              help="A torchvision detection model (fasterrcnn_resnet50_fpn_v2, retinanet_resnet50_fpn, "
                   "fcos_resnet50_fpn, ...), or tiny-fcos (our small one; --detector-weights is its folder).")
@click.option("--detector-weights", "weights", type=click.Path(exists=True), default=None,
              help="The weights: a state dict (.pth or .safetensors), or a tiny-fcos folder. Default for "
                   "torchvision models: torchvision's file in torch's hub cache (nothing is downloaded).")
@click.option("--labelspace", default="hico_det", metavar="NAME|FILE",
              help="Label space whose objects the detector's classes map to (COCO ids through its COCO map).")
@detector_run_options
@click_options(DetectOptions, only=_RUN_OWN)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="The detections file to write (.h5); OUTPUT.wip/ while in progress.")
def run_cmd(images, images_list, model, weights, labelspace, output, **options):
    """Run an object detector over a folder of images into one HDF5 detections file (resumable)."""
    from hoidata import detections as D
    from hoidata.labelspace import LabelSpace
    from pipeline.detection.stage import run_detector

    dets = run_detector(output, images=images, model=model, weights=weights, images_list=images_list,
                        labelspace=LabelSpace.load(labelspace), options=DetectOptions(**options))
    click.echo(D.summary(dets))
    if dets.attrs.get("skipped_images"):
        click.echo(f"skipped     {len(dets.attrs['skipped_images'])} unreadable image(s), e.g. "
                   f"{dets.attrs['skipped_images'][0]}")
    click.echo(f"wrote {output}")
