"""``hoi detections run``: an object detector over a folder of images, into the detections store.

The output is the HDF5 store of :mod:`hoidata.detections`, as ``hoi detections import``
writes it (same conventions: ``coord`` boxes clipped to the image, zero-area ones dropped,
scores descending per image, the label space's name and fingerprint), so everything that
reads imported detections reads these. Its attributes record what decides the boxes: the
detector, its weights' sha256, its own thresholds and input sizes, our score threshold,
class-wise NMS and per-image cap, the device and precision, the library versions. No
timestamp: two runs with the same settings write the same content.

Resuming: images go in chunks (``chunk_size``, 256 by default); each finished chunk is one
``.npz`` in ``OUT.wip/`` written atomically, beside ``settings.json`` (what the run is).
A rerun with the same settings reuses the finished chunks and gives the same file as an
uninterrupted run; a ``.wip`` made with other settings is refused by name. The final file
is assembled from the chunks and written atomically, then the ``.wip`` is removed.
The settings include the batch size and device: a detector's batch pads its images to
one size, which can move boxes slightly, so chunks of different batchings are not mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, fields
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from hoicore import __version__
from hoicore.errors import HoiError
from hoicore.files import UnsafeNameError, atomic_write, check_inside, json_form
from hoidata import ragged
from hoidata.detections import Detections, DetectionsError, load_detections, load_image_list, save_detections
from hoidata.labelspace import LabelSpace
from pipeline.detection.detector import LoadedDetector, filter_image, load_detector
from pipeline.detection.options import DetectOptions
from pipeline.images import Decoded, read_sized

log = logging.getLogger(__name__)

WIP_SCHEMA = "hoi-detect-wip/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_LIST_SUFFIXES = (".json", ".gz", ".mat")  # annotation files / COCO image info; other files list names


class DetectStageError(HoiError, ValueError):
    """A detector run that cannot go on as asked; the message names the file and the fix."""


# -- inputs -------------------------------------------------------------------------------

def list_images(images: str | Path, images_list: str | Path | None = None,
                labelspace: LabelSpace | None = None) -> tuple[list[str], np.ndarray]:
    """File names (relative to ``images``) and expected sizes int64 [N, 2] ((w, h); -1 unknown).

    Without ``images_list``: the JPEG and PNG files directly in the folder, sorted by name.
    With one: an annotation file or COCO image-info JSON (``.json``, ``.json.gz``, ``.mat``;
    its order, and its sizes are checked against the pixels), or a text file of names, one a
    line (blank lines and ``#`` comments ignored).
    """
    root = Path(images)
    if not root.is_dir():
        raise DetectStageError(f"images folder {root} does not exist")
    if images_list is None:
        names = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise DetectStageError(f"{root}: no JPEG or PNG files in the folder; pass --images-list for others")
        _check_inside(root, names, str(root))  # a symlink in the folder may lead out of it
        return names, np.full((len(names), 2), -1, np.int64)
    path = Path(images_list)
    if path.suffix.lower() in _LIST_SUFFIXES:
        records = load_image_list(path, labelspace or LabelSpace.load("hico_det"), image_id="index")
        names = [r[1] for r in records]
        sizes = np.array([(r[2], r[3]) for r in records], np.int64).reshape(-1, 2)
    else:
        if not path.is_file():
            raise DetectStageError(f"{path}: no such image list file")
        lines = (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
        names = [ln for ln in lines if ln and not ln.startswith("#")]
        sizes = np.full((len(names), 2), -1, np.int64)
    if not names:
        raise DetectStageError(f"{path}: the image list is empty")
    if len(set(names)) != len(names):
        seen = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        raise DetectStageError(f"{path}: image {dup} is listed twice")
    _check_inside(root, names, str(path))
    return names, np.where(sizes > 0, sizes, -1)


def _check_inside(root: Path, names: list[str], source: str) -> None:
    """The teacher cache's rule, for every command that reads images: a name (listed, or a
    symlink in the folder) must not lead outside the images folder."""
    try:
        check_inside(root, names, source=source)
    except UnsafeNameError as e:
        raise DetectStageError(str(e)) from None


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32 on the CPU; on CUDA fp16 unless asked otherwise (box decoding runs in the autocast
    dtype, and bf16's 8-bit mantissa puts corners of a 640-pixel image 4 px apart; fp16: 0.5)."""
    if device.type != "cuda":
        if precision in _AMP_DTYPES:
            raise DetectStageError(f"--precision {precision} needs a CUDA device; on the CPU use fp32 (or auto)")
        return "fp32"
    return "fp16" if precision == "auto" else precision


def wip_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".wip")


# -- identity -----------------------------------------------------------------------------

def _names_sha256(names: list[str], sizes: np.ndarray) -> str:
    h = hashlib.sha256("\0".join(names).encode())
    h.update(np.ascontiguousarray(sizes, np.int64).tobytes())
    return h.hexdigest()


def run_settings(det: LoadedDetector, labelspace: LabelSpace, root: Path, names: list[str], sizes: np.ndarray,
                 opts: DetectOptions, device: torch.device, precision: str) -> dict:
    """What decides the output (JSON-ready): compared with a ``.wip`` or an existing file on reuse."""
    # the options not marked runtime; device and precision as resolved (after the others)
    keep = {f.name for f in fields(opts) if not f.metadata["runtime"]} - {"device", "precision"}
    return {"schema": WIP_SCHEMA, "detector": det.name, "weights_sha256": det.weights_sha256,
            "detector_config": det.config, "labelspace_fingerprint": labelspace.fingerprint,
            "images": str(root.absolute()), "num_images": len(names), "images_sha256": _names_sha256(names, sizes),
            **{k: v for k, v in asdict(opts).items() if k in keep}, "device": device.type, "precision": precision}


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# -- running ------------------------------------------------------------------------------

def decoded_batches(paths: list[Path], expected: np.ndarray, batch_size: int, workers: int,
                    max_side: int | None = None):
    """Yield (positions, [:class:`pipeline.images.Decoded` or error message]) per batch,
    decoding up to two batches ahead in ``workers`` threads (PIL releases the GIL while it
    decodes); images larger than ``max_side`` are reduced to it as they are decoded."""
    batches = [range(s, min(s + batch_size, len(paths))) for s in range(0, len(paths), batch_size)]
    size = lambda i: tuple(expected[i]) if expected[i, 0] > 0 else None  # noqa: E731
    if workers <= 0:
        for b in batches:
            yield b, [read_sized(paths[i], size(i), max_side) for i in b]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        todo = iter(batches)
        submit = lambda b: (b, [pool.submit(read_sized, paths[i], size(i), max_side) for i in b])  # noqa: E731
        pending = deque(submit(b) for b in islice(todo, 3))
        while pending:
            b, futures = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield b, [f.result() for f in futures]


def _infer(model: torch.nn.Module, arrays: list[np.ndarray], device: torch.device, precision: str) -> list[dict]:
    """The model's raw outputs for uint8 [H, W, 3] images (any sizes): one dict per image."""
    # torch.tensor copies: PIL's buffers are read-only, and torch warns on those.
    x = [torch.tensor(a).to(device, non_blocking=True).permute(2, 0, 1).float().div_(255) for a in arrays]
    amp = torch.autocast(device.type, dtype=_AMP_DTYPES[precision]) if precision in _AMP_DTYPES else nullcontext()
    with torch.inference_mode(), amp:
        return model(x)


def detect_images(det: LoadedDetector, images: list[Decoded], opts: DetectOptions, device: torch.device,
                  precision: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per decoded image: (boxes float32 [k, 4] coord, in the file's pixels, scores float32
    [k], labels int64 [k] objects of the label space), after the mapping, threshold, NMS and
    cap of ``opts``."""
    if not images:
        return []
    outputs = _infer(det.model, [d.pixels for d in images], device, precision)
    found = [filter_image(out["boxes"], out["scores"], out["labels"], det.label_to_object,
                          (d.pixels.shape[1], d.pixels.shape[0]), opts.score_threshold, opts.nms_iou,
                          opts.max_per_image) for d, out in zip(images, outputs)]
    return [(box if d.size == (d.pixels.shape[1], d.pixels.shape[0]) else (box * d.scale).astype(np.float32),
             score, label) for d, (box, score, label) in zip(images, found)]


class DetectionBlock(NamedTuple):
    """The detections of n images, one image's after another's, in image order."""

    counts: np.ndarray   # int64 [n] detections of each image
    boxes: np.ndarray    # float32 [d, 4] coord
    scores: np.ndarray   # float32 [d]
    labels: np.ndarray   # int64 [d] objects of the label space


def concat_detections(per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> DetectionBlock:
    """One block of the per-image (boxes, scores, labels) of :func:`detect_images`; empty
    arrays for no image (``np.concatenate`` refuses an empty list)."""
    if not per_image:
        return DetectionBlock(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                              np.zeros(0, np.int64))
    return DetectionBlock(counts=np.array([len(s) for _, s, _ in per_image], np.int64),
                          boxes=np.concatenate([b for b, _, _ in per_image]).reshape(-1, 4).astype(np.float32),
                          scores=np.concatenate([s for _, s, _ in per_image]).astype(np.float32),
                          labels=np.concatenate([lab for _, _, lab in per_image]).astype(np.int64))


def detect_chunk(det: LoadedDetector, root: Path, names: list[str], expected: np.ndarray, opts: DetectOptions,
                 device: torch.device, precision: str, bar=None) -> dict[str, np.ndarray]:
    """Detections of ``names`` as one chunk's arrays: sizes int64 [n, 2], counts int64 [n],
    boxes float32 [d, 4], scores float32 [d], labels int64 [d], skipped bool [n]."""
    n = len(names)
    sizes, skipped = np.where(expected > 0, expected, -1).astype(np.int64), np.zeros(n, bool)
    per_image: list[tuple] = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))] * n
    paths = [root / name for name in names]
    for positions, decoded in decoded_batches(paths, expected, opts.batch_size, opts.workers, det.input_side):
        ok = []
        for pos, got in zip(positions, decoded):
            if isinstance(got, str):
                if opts.on_error != "skip":
                    raise DetectStageError(f"{got} (pass --on-error skip to record it as skipped and go on)")
                log.warning("skipping %s", got)
                skipped[pos] = True
            else:
                ok.append((pos, got))
        for (pos, got), found in zip(ok, detect_images(det, [d for _, d in ok], opts, device, precision)):
            sizes[pos] = got.size
            per_image[pos] = found
        if bar is not None:
            bar.update(len(positions))
    return {"sizes": sizes, **concat_detections(per_image)._asdict(), "skipped": skipped}


def _save_chunk(path: Path, arrays: dict) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
        np.savez(f, **arrays)


def _load_chunk(path: Path, n: int) -> dict | None:
    """A finished chunk of ``n`` images, or None when it is absent or unreadable (then redone)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("sizes", "counts", "boxes", "scores", "labels", "skipped")}
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s: unreadable (%s); detecting its images again", path, e)
        return None
    if len(arrays["counts"]) != n or int(arrays["counts"].sum()) != len(arrays["scores"]):
        log.warning("%s: holds another number of images or detections; detecting its images again", path)
        return None
    return arrays


def _open_wip(wip: Path, settings: dict) -> None:
    """Create ``wip`` for ``settings``, or check that an existing one was made with them."""
    file = wip / "settings.json"
    if file.is_file():
        try:
            old = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        diff = _differing(old, json_form(settings))
        if diff:
            raise DetectStageError(f"{wip}: made with other settings (differing: {', '.join(diff)}); rerun with "
                                   "those, or pass --overwrite to start afresh")
        return
    wip.mkdir(parents=True, exist_ok=True)
    with atomic_write(file) as tmp:
        tmp.write_text(json.dumps(settings, indent=1) + "\n")


def _existing_output(out: Path, settings: dict, labelspace: LabelSpace) -> bool:
    """True when ``out`` holds this run's result already; DetectStageError when it holds another."""
    try:
        old = load_detections(out, labelspace).attrs.get("run_settings")
    except DetectionsError:
        old = None
    if old == json_form(settings):
        return True
    raise DetectStageError(f"{out} exists and was not made by this run's settings; pass --overwrite to replace "
                           "it, or choose another -o")


def _attrs(det: LoadedDetector, labelspace: LabelSpace, settings: dict, opts: DetectOptions, device: torch.device,
           root: Path, skipped: list[str]) -> dict:
    """Provenance in the importers' conventions (detector, weights, score_threshold, nms, ...)."""
    import torchvision

    own = det.own_settings
    dev = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return {
        "detector": det.name, "weights": str(det.weights.absolute()), "weights_sha256": det.weights_sha256,
        "score_threshold": float(opts.score_threshold),
        "nms": {"iou": float(opts.nms_iou), "per_class": True, "applied": "after the detector's own"}
        if opts.nms_iou < 1 else "the detector's own only",
        "nms_iou": float(opts.nms_iou), "max_per_image": int(opts.max_per_image),
        "detector_settings": own, "input_sizes": {k: v for k, v in own.items() if k.startswith("transform.")},
        "detector_config": det.config, "category_ids": det.category_ids, "box_format": "coord",
        "labelspace": labelspace.name, "labelspace_fingerprint": labelspace.fingerprint,
        "source": str(root.absolute()), "device": dev, "precision": settings["precision"],
        "batch_size": int(opts.batch_size), "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__), "hoidata_version": __version__,
        "skipped_images": skipped, "run_settings": settings,
    }


def run_detector(out: str | Path, *, images: str | Path, model: str, labelspace: LabelSpace,
                 weights: str | Path | None = None, images_list: str | Path | None = None,
                 options: DetectOptions = DetectOptions()) -> Detections:
    """Detect objects in every image of ``images`` (or of ``images_list``) into ``out`` (HDF5);
    resumes a ``.wip`` left by an interrupted run with the same settings. Returns the detections.
    One run at a time holds ``out`` (a lock beside it naming its holder), as every writer does."""
    from hoicore.lock import exclusive

    with exclusive(Path(out).absolute(), what="detections"):
        return _run_detector(Path(out), images=images, model=model, labelspace=labelspace, weights=weights,
                             images_list=images_list, options=options)


def _run_detector(out: Path, *, images, model: str, labelspace: LabelSpace, weights, images_list,
                  options: DetectOptions) -> Detections:
    from hoicore.device import resolve_device

    root = Path(images)
    names, expected = list_images(root, images_list, labelspace)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device)
    det = load_detector(model, weights, labelspace)
    det.model.to(device)
    settings = run_settings(det, labelspace, root, names, expected, options, device, precision)
    _warn_own_threshold(det, options)
    wip = wip_path(out)
    if options.overwrite:
        shutil.rmtree(wip, ignore_errors=True)
        out.unlink(missing_ok=True)
    if out.exists() and _existing_output(out, settings, labelspace):
        log.info("%s is already complete with these settings; nothing to do", out)
        shutil.rmtree(wip, ignore_errors=True)  # left by a run stopped just after writing out
        return load_detections(out, labelspace)
    _open_wip(wip, settings)

    chunks = _run_chunks(det, root, names, expected, options, device, precision, wip)
    dets = _assemble(names, chunks)
    skipped = [names[i] for i in np.flatnonzero(np.concatenate([c["skipped"] for c in chunks]))]
    if len(skipped) == len(names):
        raise DetectStageError(f"none of the {len(names)} images under {root} could be read (e.g. {skipped[0]}); "
                               f"fix --images and rerun with --overwrite")
    dets.attrs.update(_attrs(det, labelspace, settings, options, device, root, skipped))
    save_detections(dets, out)
    shutil.rmtree(wip, ignore_errors=True)
    log.info("%s: %d detections on %d images (%d skipped)", out, dets.num_detections, len(dets), len(skipped))
    return dets


def _warn_own_threshold(det: LoadedDetector, opts: DetectOptions) -> None:
    own = [v for k, v in det.own_settings.items() if k.endswith("score_thresh") and not k.startswith("rpn")]
    if own and opts.score_threshold < max(own):
        log.warning("%s keeps only scores >= %g itself; --score-threshold %g below that changes nothing",
                    det.name, max(own), opts.score_threshold)


def _run_chunks(det, root, names, expected, opts, device, precision, wip: Path) -> list[dict]:
    """Every chunk's arrays: reused from ``wip`` where finished, detected (and saved) otherwise."""
    from tqdm import tqdm

    starts = list(range(0, len(names), opts.chunk_size))
    chunks = [_load_chunk(wip / f"chunk_{k:05d}.npz", len(names[s:s + opts.chunk_size]))
              for k, s in enumerate(starts)]
    done = sum(len(names[s:s + opts.chunk_size]) for s, c in zip(starts, chunks) if c is not None)
    if done:
        log.info("resuming %s: %d of %d images done", wip, done, len(names))
    with tqdm(total=len(names), initial=done, unit="img", desc=f"detect {det.name}", disable=not opts.progress,
              dynamic_ncols=True) as bar:
        for k, s in enumerate(starts):
            if chunks[k] is None:
                part = slice(s, s + opts.chunk_size)
                chunks[k] = detect_chunk(det, root, names[part], expected[part], opts, device, precision, bar)
                _save_chunk(wip / f"chunk_{k:05d}.npz", chunks[k])
    return chunks


def _assemble(names: list[str], chunks: list[dict]) -> Detections:
    cat = lambda key: np.concatenate([c[key] for c in chunks])  # noqa: E731
    counts = cat("counts")
    offsets = ragged.offsets(counts)
    return Detections(names, cat("sizes"), offsets, cat("boxes").reshape(-1, 4), cat("scores"), cat("labels"))
