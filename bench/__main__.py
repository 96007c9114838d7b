"""``make bench`` (``python -m bench``): the command that runs every bench, or one (``--only``)."""

from __future__ import annotations

import click


@click.command()
@click.option("--predictions", "num", type=click.IntRange(min=1000), default=1_000_000,
              help="Number of synthetic predictions (evaluator and predictions-read benches).")
@click.option("--baseline-classes", type=click.IntRange(1, 600), default=30,
              help="Classes the slow baseline is timed on.")
@click.option("--only", type=click.Choice(["all", "eval", "read", "teacher", "trainer", "memory", "detect", "store"]),
              default="all", help="Which stage to time.")
@click.option("--teacher-images", type=click.IntRange(min=1), default=64, help="Images in the teacher-cache bench.")
@click.option("--model", default=None, help="open_clip model of the teacher bench (default: ViT-B-16 on a GPU, "
                                            "a small ViT on the CPU); random weights.")
@click.option("--teacher-run", multiple=True, metavar="NAME=VALUE",
              help="A run option of the teacher-cache pipeline, repeatable: workers=16, decode=threads, "
                   "writer=process, images_per_shard=1024, batch_size=64, crop_batch=512, jobs=2, ...")
@click.option("--teacher-variant", multiple=True, metavar="'NAME=VALUE ...'",
              help="One more teacher-cache run on the same images with these run options changed, repeatable: "
                   "--teacher-variant 'jobs=2' --teacher-variant 'jobs=2 images_per_shard=1024'.")
def main(num: int, baseline_classes: int, only: str, teacher_images: int, model: str | None,
         teacher_run: tuple[str, ...], teacher_variant: tuple[str, ...]) -> None:
    """Print speed ratios of hoi-distill's stages against their baselines."""
    from hoi.logs import setup_logging

    setup_logging(quiet=True)
    # each bench's module imported only when it runs (torch is slow to import; --help stays instant)
    if only in ("all", "eval"):
        from bench.predictions import bench_evaluator
        bench_evaluator(num, baseline_classes)
    if only in ("all", "read"):
        from bench.predictions import bench_predictions_read
        bench_predictions_read(num)
    if only in ("all", "teacher"):
        from bench.teacher import bench_teacher, parse_run_overrides
        from pipeline.teacher.options import RunOptions
        try:
            run = parse_run_overrides(list(teacher_run))
            variants = [parse_run_overrides(v.replace(",", " ").split()) for v in teacher_variant]
            for v in [run, *({**run, **v} for v in variants)]:
                RunOptions(**v)  # range and choice checks before anything runs
        except ValueError as e:
            raise click.BadParameter(str(e)) from e
        bench_teacher(model=model, num_images=teacher_images, run=run, variants=variants, echo=click.echo)
    if only in ("all", "trainer"):
        from bench.trainer import bench_trainer
        bench_trainer(echo=click.echo)
    if only in ("all", "memory"):
        from bench.memory import bench_memory, bench_teacher_memory
        bench_memory(echo=click.echo)
        bench_teacher_memory(echo=click.echo)
    if only in ("all", "store"):
        from bench.store import bench_store
        bench_store(echo=click.echo)
    if only in ("all", "detect"):
        from bench.detect import bench_detect, bench_paper_scale
        bench_detect()
        bench_paper_scale(echo=click.echo)


if __name__ == "__main__":
    main()
