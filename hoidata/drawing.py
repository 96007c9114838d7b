"""How pictures of detections are drawn (``hoi visualize``, ``hoi detect --draw``, the demo's
figures), declared once for the command line; light to import (the drawing itself,
:mod:`hoidata.visualize`, loads PIL and the fonts)."""

from __future__ import annotations

from dataclasses import dataclass

from hoicore.errors import InputError
from hoicore.options import check_fields, option

DEFAULT_SIZE = 1024  # long side of a picture (px): sharp on a slide, small as a file
TOP = 3  # pairs drawn per image


@dataclass(frozen=True)
class Drawing:
    """How many pictures, of how many pairs, how large: images drawn, pairs per image, long
    side in pixels (0: the image's own)."""

    count: int = option(8, "Images drawn (the first ones with predictions).", minimum=1, flag="draw-count")
    top: int = option(TOP, "Pairs drawn per image (the highest scores).", minimum=1, flag="draw-top")
    size: int = option(DEFAULT_SIZE, "Long side of each picture in pixels (0: the image's own); lines and text are "
                                     "sized to it.", minimum=0, flag="draw-size")

    def __post_init__(self):
        check_fields(self, InputError)
