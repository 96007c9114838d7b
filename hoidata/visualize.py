"""Pictures of results fit for a paper or a talk: an image's top HOI detections, and a
results file's per-class AP.

Detections (:func:`draw`): the image is resampled smoothly to ``size`` pixels on its long
side, and everything drawn on it (line widths, DejaVu Sans text) is sized to that side, so a
224 px scene and an 8000 px photo come out alike. The human box is a solid outline, the
object box a dashed one, the pair a line between their centres; each pair has its colour
and a label ``verb object score`` placed where it overlaps no other label. A legend strip
under the image says which line is which.

Per-class AP (:func:`plot_class_ap`): classes sorted by AP, Rare classes marked, the means of
Full, Rare and Non-rare drawn across.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hoicore.errors import InputError
from hoicore.files import IMAGE_FORMATS, atomic_write

from . import boxes as B
from .drawing import DEFAULT_SIZE, TOP, Drawing
from .labelspace import LabelSpace
from .predictions import Predictions

# Dark, saturated colours: white label text stays readable on each, and each stands out on a
# photo (Tableau's palette without its light grey and olive).
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 150, 160),
           (140, 86, 75), (227, 119, 194)]
HALO = (20, 20, 20)


def draw_images(pred: Predictions, labelspace: LabelSpace, image_of: Callable[[str], Path], folder,
                drawing: Drawing = Drawing(), names=()) -> list[Path]:
    """One picture per image named in ``names`` (default: the first ``drawing.count`` images
    with a prediction) in ``folder``, as ``STEM.png``; ``image_of``: an image name's file."""
    names = list(names) or [pred.file_names[i] for i in sorted(set(pred.image.tolist()))[:drawing.count]]
    return [draw(image_of(name), pred, labelspace, Path(folder) / (Path(name).stem + ".png"), k=drawing.top,
                 size=drawing.size) for name in names]


def top_detections(pred: Predictions, file_name: str, k: int = TOP) -> np.ndarray:
    """int64 [<=k]: rows of ``file_name``'s highest-scoring predictions."""
    try:
        i = pred.file_names.index(file_name)
    except ValueError:
        raise InputError(f"no predictions for image {file_name}") from None
    rows = np.flatnonzero(pred.image == i)
    return rows[np.argsort(-pred.score[rows], kind="stable")[:k]]


def font(px: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, a dependency) at ``px`` pixels."""
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")), px)


def display_name(name: str) -> str:
    """A class name as a reader writes it: 'ride sports_ball' -> 'ride sports ball'."""
    return name.replace("_", " ")


def sizes_for(long_side: int) -> tuple[int, int]:
    """(line width, font size) in pixels for a picture ``long_side`` pixels long: about 1/250
    and 1/40 of it, never below what stays visible (2 px lines, 12 px text)."""
    return max(2, round(long_side / 250)), max(12, round(long_side / 40))


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(sizes: list[tuple[int, int]], anchors: list[list[tuple[float, float]]],
                 bounds: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Boxes (x1, y1, x2, y2) for labels of ``sizes`` (w, h), the i-th at the first of its
    ``anchors`` (top-left corners, in order of preference) that keeps it inside ``bounds``
    (width, height) and clear of the labels placed before it; failing all of them, the
    nearest free place straight below its first anchor, then above. Labels are placed in
    order, so the best-scoring pair gets its first choice."""
    width, height = bounds
    placed: list[tuple[int, int, int, int]] = []

    def fit(x, y, w, h):
        x = int(min(max(0, x), max(0, width - w)))
        y = int(min(max(0, y), max(0, height - h)))
        return x, y, x + w, y + h

    for (w, h), options in zip(sizes, anchors):
        x0, y0 = options[0]
        fallback = [(x0, y0 + s * h) for s in range(1, height // max(h, 1) + 1)]
        fallback += [(x0, y0 - s * h) for s in range(1, height // max(h, 1) + 1)]
        box = next((b for b in (fit(x, y, w, h) for x, y in list(options) + fallback)
                    if not any(_overlaps(b, p) for p in placed)), fit(x0, y0, w, h))
        placed.append(box)
    return placed


def _dashed_rectangle(d: ImageDraw.ImageDraw, box, colour, width: int, dash: int | None = None) -> None:
    """An outline of dashes (``dash`` px, default 3 line widths): the object box, told apart
    from the human's."""
    x1, y1, x2, y2 = box
    dash = dash or 3 * width
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True), (y1, y2, x1, False),
                                    (y1, y2, x2, False)):
        for s in np.arange(a, b, 2 * dash):
            e = min(s + dash, b)
            d.line([(s, fixed), (e, fixed)] if horizontal else [(fixed, s), (fixed, e)], fill=colour, width=width)


def _legend(width: int, line: int, text: ImageFont.FreeTypeFont) -> Image.Image:
    """The strip under a picture: what the solid box, the dashed box and the line are."""
    pad = text.size // 2
    strip = Image.new("RGB", (width, text.size + 2 * pad), (255, 255, 255))
    d = ImageDraw.Draw(strip)
    x, grey, side = pad, (60, 60, 60), text.size
    for label, kind in (("human", "solid"), ("object", "dashed"), ("pair: verb object score", "link")):
        box = (x, pad, x + side, pad + side)
        if kind == "solid":
            d.rectangle(box, outline=grey, width=line)
        elif kind == "dashed":
            _dashed_rectangle(d, box, grey, max(1, line // 2 + 1))
        else:
            d.line([(x, pad + side / 2), (x + side, pad + side / 2)], fill=grey, width=line)
        d.text((x + side + pad, pad), label, fill=grey, font=text)
        x += side + pad + int(d.textlength(label, font=text)) + 3 * pad
    return strip


def draw(image_path, pred: Predictions, labelspace: LabelSpace, out_path, k: int = TOP,
         size: int = DEFAULT_SIZE) -> Path:
    """Draw the top ``k`` pairs of one image to the PNG ``out_path``. ``size``: long side
    of the picture in pixels (0: the image's own size)."""
    image_path = Path(image_path)
    im = Image.open(image_path, formats=IMAGE_FORMATS).convert("RGB")
    scale = size / max(im.size) if size else 1.0
    if scale != 1.0:  # smooth both ways: no blocky upscaled pixels, no aliased downscaled photo
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.BICUBIC if scale > 1 else Image.LANCZOS)
    line, text_px = sizes_for(max(im.size))
    text = font(text_px)
    d = ImageDraw.Draw(im)
    rows = top_detections(pred, image_path.name, k)
    pairs = [(B.convert(pred.boxes_h[r], pred.box_format, "coord") * scale,
              B.convert(pred.boxes_o[r], pred.box_format, "coord") * scale, r) for r in rows]
    drawn: set[tuple] = set()  # a box of several pairs (one person, two objects) is drawn once
    for n, (h, o, _) in enumerate(pairs):
        colour = COLOURS[n % len(COLOURS)]
        ch, co = ((h[0] + h[2]) / 2, (h[1] + h[3]) / 2), ((o[0] + o[2]) / 2, (o[1] + o[3]) / 2)
        # each stroke twice: dark and wider first, so that it shows on a busy photo too
        for stroke, width in ((HALO, line + 2), (colour, line)):
            for box, solid in ((h, True), (o, False)):
                if (tuple(np.round(box, 1)), solid) in drawn:
                    continue
                if solid:
                    d.rectangle(box.tolist(), outline=stroke, width=width)
                else:
                    _dashed_rectangle(d, box.tolist(), stroke, width, dash=3 * line)
            d.line([ch, co], fill=stroke, width=width)
            for c in (ch, co):
                r = 1.5 * line + (width - line) / 2
                d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=stroke)
        drawn.update({(tuple(np.round(h, 1)), True), (tuple(np.round(o, 1)), False)})
    labels = [f"{display_name(labelspace.class_name(int(pred.hoi[r])))} {pred.score[r]:.2f}" for _, _, r in pairs]
    pad = max(2, text_px // 5)
    sizes = [(int(d.textlength(s, font=text)) + 2 * pad, text_px + 2 * pad) for s in labels]
    anchors = [[(h[0], h[1] - th), (h[0], h[1]), (o[0], o[1] - th), (o[0], o[1]), (h[0], h[3]), (o[0], o[3])]
               for (h, o, _), (_, th) in zip(pairs, sizes)]
    for n, (box, s) in enumerate(zip(place_labels(sizes, anchors, im.size), labels)):
        d.rectangle(box, fill=COLOURS[n % len(COLOURS)])
        d.text((box[0] + pad, box[1] + pad), s, fill=(255, 255, 255), font=text)
    legend = _legend(im.width, line, font(max(10, round(text_px * 0.8))))
    out = Image.new("RGB", (im.width, im.height + legend.height), (255, 255, 255))
    out.paste(im, (0, 0))
    out.paste(legend, (0, im.height))
    out_path = Path(out_path)
    with atomic_write(out_path) as tmp:  # a picture is whole or absent, never half-written
        out.save(tmp, format="PNG")
    return out_path


def plot_result(res, out_path, title: str = "") -> Path:
    """:func:`plot_class_ap` of an :class:`hoidata.evaluation.EvalResult`'s Default setting."""
    ls = res.labelspace
    return plot_class_ap(res.ap["default"], ls.rare, [ls.class_name(c) for c in range(ls.num_classes)], out_path,
                         title=title)


def plot_class_ap(ap: np.ndarray, rare: np.ndarray, names: list[str], out_path, *, title: str = "",
                  setting: str = "Default") -> Path:
    """A bar per class, sorted by AP, Rare classes in orange, the means of Full, Rare and
    Non-rare as lines across, to the PNG ``out_path``. ``ap``: float [C] fractions (NaN: a
    class without test pairs, left out); ``rare``: bool [C]; ``names``: C class names
    (written under the bars when there are at most 60 classes)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, never a display needed
    import matplotlib.pyplot as plt

    ap, rare = np.asarray(ap, dtype=np.float64), np.asarray(rare, dtype=bool)
    keep = np.flatnonzero(~np.isnan(ap))
    if not len(keep):
        raise InputError(f"{out_path}: no class has a defined AP, nothing to plot")
    order = keep[np.argsort(-ap[keep], kind="stable")]
    fig, ax = plt.subplots(figsize=(min(16, max(8, len(order) / 8)), 4.5), dpi=150, layout="constrained")
    ax.bar(np.arange(len(order)), 100 * ap[order], width=0.9 if len(order) <= 60 else 1.0,
           color=["#ff7f0e" if rare[c] else "#1f77b4" for c in order])
    for subset, label, style in ((keep, "Full", "-"), (keep[rare[keep]], "Rare", "--"),
                                 (keep[~rare[keep]], "Non-rare", ":")):
        if len(subset):
            ax.axhline(100 * ap[subset].mean(), color="#333333", linestyle=style, linewidth=1.2,
                       label=f"{label} mAP {100 * ap[subset].mean():.2f}")
    ax.bar([0], [0], color="#ff7f0e", label=f"Rare class ({int(rare[keep].sum())})")
    ax.bar([0], [0], color="#1f77b4", label=f"Non-rare class ({int((~rare[keep]).sum())})")
    if len(order) <= 60:
        ax.set_xticks(np.arange(len(order)), [display_name(names[c]) for c in order], rotation=70, ha="right",
                      fontsize=7)
    else:
        ax.set_xticks([])
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"HOI classes, sorted by AP ({len(order)})")
    ax.set_ylabel(f"AP (%), {setting} setting")
    ax.set_title(title or "Per-class AP")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    out_path = Path(out_path)
    with atomic_write(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_path
