"""Decoding images into padded batches, ahead of the encoder.

A batch of images of different sizes becomes one uint8 canvas ``[n, C, H, W]`` (images
top-left, ``H``/``W`` the largest), so the shard uploads it in one copy and cuts every
crop of the batch with one ``roi_align`` call per pass (``pipeline.teacher.crops``), instead of
a dozen small operations per image on the thread that feeds the GPU.

Padding keeps crops what they would be if each image were cut alone, and independent of
which images share the batch. ``roi_align`` clamps samples within one pixel past an
image's edge to the edge pixels; so every image sits ``BORDER`` pixels in from the
canvas's top left, its edge rows and columns repeated once on every side, zeros beyond.
Crops that stay on their image (squash and center without margin) are then exactly
those of the image alone. When crops may reach outside their image (``pad`` crop mode,
union margins) a fourth channel is 255 on the image (and its repeated edge) and 0 on the
padding: the crop of that channel is the share of each output pixel that lies on the
image, which the normalisation needs (outside reads as the mean colour). There the edge
fades to the mean colour over one source pixel on every side instead of stopping dead.

Any PIL mode becomes RGB (grayscale, palette, CMYK; alpha is dropped). A missing or
corrupt file does not raise in the worker: the batch lists it as failed with a message
naming the file, and the shard decides (stop, or record it as skipped).

Memory: a batch's canvas is its number of images times the largest of them (fine for
HICO-DET, whose images are at most 640 x 640; lower ``--batch-size`` for huge images).

Three ways to decode, one interface (:class:`Decoder`): inline (``workers=0``), worker
threads, or worker processes. The processes are a persistent ``DataLoader`` kept for the
whole run, so shards after the first start without spawning workers again.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hoicore.errors import RunError
from hoicore.files import IMAGE_FORMATS


@dataclass(frozen=True)
class BatchSpec:
    """What to load for one batch (small and picklable: it travels to worker processes)."""

    root: str
    file_names: tuple[str, ...]
    positions: tuple[int, ...]              # returned as ImageBatch.index (positions within the shard)
    sizes: tuple[tuple[int, int], ...] | None = None  # expected (w, h) each; (0, 0) = not known
    inside_channel: bool = False            # add the on-image channel (crops may reach outside)
    max_side: int | None = None             # decode larger images reduced to this long side


# The teacher cache decodes an image whose long side exceeds this reduced to it (JPEG draft
# decoding, then bilinear), boxes scaled to match: a batch's canvas, and so its memory, is
# bounded by 2048 x 2048 an image whatever the files hold. HICO-DET's and COCO's images (at
# most 640 px) are read as they are; a union crop of a huge photo still has >= 224 source
# pixels across unless its box is under a ninth of the photo's long side.
TEACHER_MAX_SIDE = 2048


@dataclass
class ImageBatch:
    """Decoded images of one batch, padded into one canvas."""

    index: np.ndarray               # int64 [n] positions of the images that decoded
    pixels: torch.Tensor            # uint8 [n, C, H, W]; C = 3, or 4 with the on-image channel
    sizes: np.ndarray               # int64 [n, 2] (w, h) of each decoded image
    failed: list[tuple[int, str]]   # (position, message naming the file) of images that did not
    first: int                      # first and last positions of the batch, failures included
    last: int
    # float64 [n, 4]: factors from a box in the file's pixels (x1, y1, x2, y2) to the decoded
    # image's; 1 where the image was read as it is (None: every image was)
    to_decoded: np.ndarray | None = None

    def pin_memory(self) -> "ImageBatch":
        """Page-locked copy, so the upload runs asynchronously (the DataLoader calls this)."""
        return replace(self, pixels=self.pixels.pin_memory())


class Decoded(NamedTuple):
    """An image as the models read it: ``pixels`` uint8 [h, w, 3], and ``size`` (W, H) the
    file's own, in whose pixels every box is given (equal to the pixels' unless reduced)."""

    pixels: np.ndarray
    size: tuple[int, int]

    @property
    def scale(self) -> np.ndarray:
        """float64 [4]: factors from pixel boxes (x1, y1, x2, y2) of ``pixels`` to the file's."""
        sx, sy = self.size[0] / self.pixels.shape[1], self.size[1] / self.pixels.shape[0]
        return np.array([sx, sy, sx, sy])


def bounded_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(w, h) of an image of ``size`` (W, H) reduced so that its long side is at most
    ``max_side`` (aspect kept, rounded; unchanged when it already is, or for None)."""
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return w, h
    f = max_side / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def decode(path: Path, max_side: int | None = None) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of an image file, in stored orientation (EXIF rotation is
    not applied: boxes of HICO-DET and of detectors reading raw pixels are in that frame).
    ``max_side``: see :func:`decode_sized`."""
    return decode_sized(path, max_side).pixels


def decode_sized(path: Path, max_side: int | None = None) -> Decoded:
    """The image of ``path`` (see :func:`decode`), reduced while it is decoded to a long side
    of at most ``max_side`` when it is larger: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by
    its DCT (the full raster never exists), then resized (bilinear) to the bound, so memory
    follows what the models read, not the file's size."""
    with Image.open(path, formats=IMAGE_FORMATS) as im:
        size = im.size
        target = bounded_size(size, max_side)
        if target != size:
            im.draft("RGB", target)  # JPEG only (a no-op otherwise): the largest DCT scale still >= target
        im.load()
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            # 16-bit or float grey: convert("RGB") would clip to 255, so scale to 8 bits first
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
            grey = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
            rgb = np.repeat(grey[:, :, None], 3, axis=2)
            return Decoded(rgb if target == size else _resized(Image.fromarray(rgb), target), size)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return Decoded(np.asarray(im, dtype=np.uint8) if im.size == target else _resized(im, target), size)


def _resized(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def read_sized(path: Path, expected: tuple[int, int] | None, max_side: int | None = None) -> Decoded | str:
    """:func:`decode_sized`, or a message naming the file when it is missing, unreadable or
    not the size the annotations give (the file's size, whatever ``max_side`` does)."""
    try:
        got = decode_sized(path, max_side)
    except FileNotFoundError:
        return f"{path}: file not found"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"{path}: cannot decode ({e})"
    if expected is not None:
        w, h = expected
        if w > 0 and got.size != (w, h):
            turned = got.size == (h, w)
            return (f"{path}: image is {got.size[0]}x{got.size[1]}, the annotations say {w}x{h}"
                    + (" (rotated by its EXIF orientation? pixels are read as stored)" if turned else ""))
    return got


BORDER = 2  # canvas pixels left and above each image: a zero, then the repeated edge


def pad_into_canvas(images: list[np.ndarray], inside_channel: bool, pin: bool = False) -> torch.Tensor:
    """uint8 [n, C, H + 2 BORDER, W + 2 BORDER] from uint8 [h_k, w_k, 3] images, H and W the
    largest; image k's pixel (y, x) is canvas pixel (y + BORDER, x + BORDER)."""
    n, o = len(images), BORDER
    hmax = max((a.shape[0] for a in images), default=0)
    wmax = max((a.shape[1] for a in images), default=0)
    canvas = torch.zeros((n, 4 if inside_channel else 3, hmax + 2 * o, wmax + 2 * o), dtype=torch.uint8,
                         pin_memory=pin)
    for k, arr in enumerate(images):
        h, w = arr.shape[:2]
        px = canvas[k, :3].numpy()  # a view: numpy copies from PIL's read-only buffer
        px[:, o:o + h, o:o + w] = arr.transpose(2, 0, 1)
        px[:, o:o + h, o - 1] = px[:, o:o + h, o]              # repeat the edge columns
        px[:, o:o + h, o + w] = px[:, o:o + h, o + w - 1]
        px[:, o - 1, o - 1:o + w + 1] = px[:, o, o - 1:o + w + 1]  # then the edge rows, corners included
        px[:, o + h, o - 1:o + w + 1] = px[:, o + h - 1, o - 1:o + w + 1]
        if inside_channel:
            canvas[k, 3, o - 1:o + h + 1, o - 1:o + w + 1] = 255
    return canvas


def load_batch(spec: BatchSpec, pin: bool = False) -> ImageBatch:
    """Decode and pad one batch. ``pin``: allocate the canvas page-locked (worker threads on
    a CUDA machine; worker processes leave pinning to the DataLoader)."""
    ok, arrays, failed, factors = [], [], [], []
    for k, (name, pos) in enumerate(zip(spec.file_names, spec.positions)):
        got = read_sized(Path(spec.root) / name, spec.sizes[k] if spec.sizes is not None else None, spec.max_side)
        if isinstance(got, str):
            failed.append((pos, got))
        else:
            ok.append(pos)
            arrays.append(got.pixels)
            factors.append(1.0 / got.scale)
    sizes = np.array([(a.shape[1], a.shape[0]) for a in arrays], dtype=np.int64).reshape(-1, 2)
    to_decoded = np.array(factors).reshape(-1, 4)
    return ImageBatch(index=np.array(ok, dtype=np.int64), pixels=pad_into_canvas(arrays, spec.inside_channel, pin),
                      sizes=sizes, failed=failed, first=spec.positions[0], last=spec.positions[-1],
                      to_decoded=to_decoded if (to_decoded != 1).any() else None)


class _SpecDataset(torch.utils.data.Dataset):
    """Map-style dataset whose "index" is a whole :class:`BatchSpec` (the sampler hands them
    out), so one persistent DataLoader serves every shard."""

    def __getitem__(self, spec: BatchSpec) -> ImageBatch:
        return load_batch(spec)


class _SpecSampler(torch.utils.data.Sampler):
    def __init__(self):
        self.specs: list[BatchSpec] = []

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


def _as_is(x):
    return x


class Decoder:
    """Decodes lists of :class:`BatchSpec` into :class:`ImageBatch` es, in order, up to
    ``ahead`` batches ahead of the consumer.

    ``mode="threads"``: a thread pool, one batch per task (PIL releases the GIL while it
    decodes, but padding and the rest compete with the thread feeding the GPU).
    ``mode="processes"``: a persistent DataLoader of spawned worker processes; pixels come
    back through shared memory and are pinned by the loader's own thread. Workers are
    spawned, not forked: the parent holds CUDA and other threads' locks.
    """

    def __init__(self, mode: str, workers: int, pin: bool, ahead: int = 4):
        self.workers, self.pin = workers, pin
        self.ahead = max(ahead, workers + 1)
        self._loader = self._sampler = None
        if mode == "processes" and workers > 0:
            self._sampler = _SpecSampler()
            self._loader = torch.utils.data.DataLoader(
                _SpecDataset(), batch_size=None, sampler=self._sampler, num_workers=workers, collate_fn=_as_is,
                pin_memory=pin, prefetch_factor=max(2, -(-self.ahead // workers)), persistent_workers=True,
                multiprocessing_context="spawn")

    def close(self) -> None:
        """Let the worker processes go (the loader's persistent iterator stops them when dropped)."""
        self._loader = self._sampler = None

    def __call__(self, specs: list[BatchSpec]):
        if self._loader is not None:
            self._sampler.specs = list(specs)
            try:
                yield from self._loader
            except RuntimeError as e:
                if "worker" not in str(e).lower():
                    raise
                raise RunError(f"a decoder worker process failed ({e}); rerun to resume. Worker processes "
                                   "pass images through shared memory: where /dev/shm is small, use "
                                   "--decode threads") from e
        elif self.workers <= 0:
            for spec in specs:
                yield load_batch(spec, self.pin)
        else:
            yield from self._threads(specs)

    def _threads(self, specs: list[BatchSpec]):
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
            todo, pending = iter(specs), deque()
            for spec in todo:
                pending.append(pool.submit(load_batch, spec, self.pin))
                if len(pending) >= self.ahead:
                    break
            while pending:
                batch = pending.popleft().result()
                spec = next(todo, None)
                if spec is not None:
                    pending.append(pool.submit(load_batch, spec, self.pin))
                yield batch
