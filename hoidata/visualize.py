"""Drawing an image's top HOI detections (boxes, class names, scores) to a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import boxes as B
from .errors import InputError
from .files import IMAGE_FORMATS, atomic_write
from .labelspace import LabelSpace
from .predictions import Predictions

COLOURS = [(230, 60, 60), (40, 120, 230), (40, 170, 80), (230, 150, 20), (150, 60, 200), (20, 170, 170)]


def top_detections(pred: Predictions, file_name: str, k: int = 3) -> np.ndarray:
    """int64 [<=k]: rows of ``file_name``'s highest-scoring predictions."""
    try:
        i = pred.file_names.index(file_name)
    except ValueError:
        raise InputError(f"no predictions for image {file_name}") from None
    rows = np.flatnonzero(pred.image == i)
    return rows[np.argsort(-pred.score[rows], kind="stable")[:k]]


def draw(image_path, pred: Predictions, labelspace: LabelSpace, out_path, k: int = 3, scale: int = 0) -> Path:
    """Draw the top ``k`` pairs of one image: human box, object box, a line between their
    centres and 'verb object score'. ``scale``: upsampling factor (0: enough for ~640 px)."""
    image_path = Path(image_path)
    im = Image.open(image_path, formats=IMAGE_FORMATS).convert("RGB")
    scale = scale or max(1, 640 // max(im.size))
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    d = ImageDraw.Draw(im)
    rows = top_detections(pred, image_path.name, k)
    for n, r in enumerate(rows):
        colour = COLOURS[n % len(COLOURS)]
        h = B.convert(pred.boxes_h[r], pred.box_format, "coord") * scale
        o = B.convert(pred.boxes_o[r], pred.box_format, "coord") * scale
        d.rectangle(h.tolist(), outline=colour, width=2)
        d.rectangle(o.tolist(), outline=colour, width=2)
        d.line([((h[0] + h[2]) / 2, (h[1] + h[3]) / 2), ((o[0] + o[2]) / 2, (o[1] + o[3]) / 2)], fill=colour, width=2)
        text = f"{labelspace.class_name(int(pred.hoi[r]))} {pred.score[r]:.2f}"
        x, y = float(h[0]) + 2, max(0.0, float(h[1]) - 12 * (n + 1))  # stacked: pairs often share a human
        d.rectangle(d.textbbox((x, y), text), fill=(0, 0, 0))
        d.text((x, y), text, fill=colour)
    out_path = Path(out_path)
    with atomic_write(out_path) as tmp:  # a picture is whole or absent, never half-written
        im.save(tmp, format="PNG")
    return out_path
