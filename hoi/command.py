"""What every ``hoi`` command has: ``-v`` / ``-q`` wherever they are typed, and the old
spellings of renamed options, accepted for one release.

One name per meaning across the commands (``-o/--output`` is what a command writes,
``--detector`` the detector, ``--teacher-model`` the CLIP, ``--scorer`` what scores pairs,
``--jobs`` units of work run at once, ``--threads`` torch's threads, ``--draw-*`` the
pictures). A command lists the names it retired in ``renamed`` (old -> new): they are not in
its help, and using one warns once and means the new one. ``tests/test_cli_vocabulary.py``
walks every command and fails on a second spelling.
"""

from __future__ import annotations

import logging
import os

import click

log = logging.getLogger("hoi")

# The commands `hoi` restarts under glibc's heap tunables (hoicore.memory.HEAP_TUNABLES)
# before they run: the long streaming runs whose heap, without them, grows with the steps
# done (make bench measures teacher-cache and train; ablate trains its students the same
# way). Every other command runs in the process the user started: the demo's small students
# are held in memory, and the tunables slow their many small allocations by about 10%.
TUNED_COMMANDS = frozenset({"teacher-cache", "train", "ablate"})

# The old spellings of options renamed when the commands got one vocabulary (release 0.1.0);
# they go in the next release. Per command: "--model" meant three different things.
RENAMED = {
    "demo": {"--out": "--output"},
    "train": {"--out": "--output"},
    "ablate": {"--out": "--output"},
    "eval": {"--results": "--output", "--predictions": "--save-predictions", "--model": "--scorer"},
    "predict": {"--model": "--scorer"},
    "teacher-cache": {"--model": "--teacher-model", "--threads": "--jobs"},
    "run": {"--model": "--detector", "--weights": "--detector-weights"},
    "import": {"--skip-unknown-images": "--ignore-unknown-images", "--weights": "--detector-weights",
               "--images": "--images-list"},
    "visualize": {"--image": "--image-name", "--count": "--draw-count", "--top": "--draw-top"},
}


def _verbosity(ctx: click.Context, param: click.Parameter, value):
    """``-v`` / ``-q`` after the command name: added to the group's, logging set up again."""
    from hoi.logs import setup_logging

    if value:
        key = f"hoi.{param.name}"
        ctx.meta[key] = ctx.meta.get(key, 0) + value
        setup_logging(ctx.meta.get("hoi.verbose", 0), bool(ctx.meta.get("hoi.quiet", 0)))


class HoiCommand(click.Command):
    """A ``hoi`` command: takes ``-v`` / ``-q`` itself, and the retired spellings of its
    options (:data:`RENAMED`) with a warning."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.renamed = RENAMED.get(self.name, {})
        self.params += [
            click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_verbosity,
                         help="More log output (also before the command)."),
            click.Option(["-q", "--quiet"], count=True, expose_value=False, callback=_verbosity,
                         help="Warnings and errors only (also before the command)."),
        ]

    def invoke(self, ctx: click.Context):
        if self.name in TUNED_COMMANDS:  # said under -v: why this process is not the one the user started
            log.debug("hoi %s runs under GLIBC_TUNABLES=%s (restarted with them so that a long run's heap stays "
                      "bounded)", self.name, os.environ.get("GLIBC_TUNABLES", "") or "(none: not glibc)")
        return super().invoke(ctx)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, [self._respell(a) for a in args])

    def _respell(self, arg: str) -> str:
        name, eq, value = arg.partition("=")
        new = self.renamed.get(name)
        if new is None:
            return arg
        log.warning("hoi %s: %s is now %s (the old name goes in the next release)", self.name, name, new)
        return new + eq + value
