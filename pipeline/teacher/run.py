"""``hoi teacher-cache``: prepare a store, run its shards on dask, finalise it.

The coordinator alone writes the prepare-time arrays (text embeddings, images,
detections, pairs, ground truth); then every shard not yet done runs as one dask task,
on the local threaded scheduler or, with ``scheduler=ADDRESS``, on a dask.distributed
cluster (one worker per GPU). A rerun finds the ``.wip`` store, checks that it was made
with the same teacher, pair rule and dataset, and runs only the shards left.

One run at a time holds an output (``OUT.lock``, :mod:`hoicore.lock`; only this
coordinator locks, never a worker). Every image name of the inputs must resolve inside
``--images`` (checked before the model loads). ``--levels global`` builds a store of the
global pass alone; a store holding more levels than asked for is reused, one holding
fewer is refused.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cache import schema as S
from cache import store as cstore
from cache.layout import Layout, plan
from hoicore.device import resolve_device
from hoicore.errors import InputError
from hoicore.files import check_inside, image_size
from hoicore.lock import exclusive
from hoidata import boxes as B
from hoidata import ragged
from hoidata.annotations import SPLITS, Annotations, split_of_names
from hoidata.detections import Detections, load_detections
from hoidata.ground_truth import read_annotations
from hoidata.labelspace import LabelSpace
from hoidata.pairs import PairRule, make_pairs
from pipeline.teacher.clip import Teacher, prompts_sha256, text_embeddings
from pipeline.teacher.options import RunOptions, TeacherOptions
from pipeline.teacher.resources import ShardResources
from pipeline.teacher.shard import ShardJob, ShardStats, helper_modes, run_shard, teacher_of

log = logging.getLogger(__name__)

KNOWN_SPLIT_SIZES = {"hico_det": (38118, 9658)}


def _sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes() if a.dtype.kind != "U" else "\0".join(a.tolist()).encode())
    return h.hexdigest()


class _CleanDetections(NamedTuple):
    """The detections as the store holds them: boxes clipped to their image (where its size
    is known), zero-area ones dropped; N images, d detections kept."""

    box: np.ndarray       # float32 [d, 4] coord
    score: np.ndarray     # float32 [d]
    label: np.ndarray     # int32 [d] object of the label space
    offsets: np.ndarray   # int64 [N + 1] each image's detections, CSR
    clipped: int          # boxes that clipping changed
    dropped: int          # zero-area boxes dropped


class _Pairs(NamedTuple):
    """Candidate pairs (:func:`hoidata.pairs.make_pairs`), grouped by image; P pairs."""

    human: np.ndarray     # int64 [P] row of the human in the clean detections
    object: np.ndarray    # int64 [P] row of the object
    offsets: np.ndarray   # int64 [N + 1] each image's pairs, CSR


def _clean_detections(dets: Detections) -> _CleanDetections:
    """Boxes clipped to their image, zero-area ones dropped."""
    img = dets.image_of_detection
    wh = dets.sizes[img].astype(np.float64)
    known = wh[:, 0] > 0
    box = np.where(known[:, None], B.clip_coord(dets.boxes, wh[:, 0], wh[:, 1]), dets.boxes)
    clipped = int(np.any(box != dets.boxes, axis=1).sum())
    keep = B.area_coord(box) > 0
    counts = np.bincount(img[keep], minlength=len(dets))
    offsets = ragged.offsets(counts)
    return _CleanDetections(box=box[keep].astype(np.float32), score=dets.scores[keep],
                            label=dets.labels[keep].astype(np.int32), offsets=offsets, clipped=clipped,
                            dropped=int((~keep).sum()))


def _pairs_of(det: _CleanDetections, labelspace: LabelSpace, rule: PairRule) -> _Pairs:
    return _Pairs(*make_pairs(det.score, det.label, det.offsets, labelspace.human, rule))


def _align_annotations(ann: Annotations, dets: Detections) -> Annotations:
    """The annotations, checked to list the detections' images in the same order and sizes."""
    if ann.file_names != dets.file_names:
        for a, b, what in ((ann, dets, "the detections file has no entry for"),
                           (dets, ann, "the annotations have no entry for")):
            missing = sorted(set(a.file_names) - set(b.file_names))
            if missing:
                raise InputError(f"{what} {len(missing)} image(s), e.g. {missing[0]}; "
                                 "import detections for the annotation file's image list")
        raise InputError("the annotations and the detections list the images in a different order; "
                         "import the detections with the annotation file as --images")
    known = (ann.sizes > 0).all(1) & (dets.sizes > 0).all(1)
    differ = np.flatnonzero(known & (ann.sizes != dets.sizes).any(1))
    if len(differ):
        i = int(differ[0])
        raise InputError(f"image {ann.file_names[i]} is {tuple(ann.sizes[i])} (width, height) in the annotations "
                         f"but {tuple(dets.sizes[i])} in the detections ({len(differ)} image(s) differ)")
    return ann


def _fill_unknown_sizes(dets: Detections, ann: Annotations | None, root: Path) -> None:
    """Sizes the detections file leaves unknown (-1), from the annotations or else the image
    headers, so boxes get clipped and the student can place them on its map."""
    unknown = np.flatnonzero((dets.sizes <= 0).any(1))
    if not len(unknown):
        return
    from PIL import Image

    for i in unknown.tolist():
        if ann is not None and (ann.sizes[i] > 0).all():
            dets.sizes[i] = ann.sizes[i]
            continue
        try:
            dets.sizes[i] = image_size(root / dets.file_names[i])
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pass  # unreadable: the shard reports or skips it
    log.info("read the size of %d image(s) the detections file leaves unknown", len(unknown))


def _check_images(root: Path, names: list[str], on_error: str) -> None:
    """Fail early (before a long run) when image files are missing."""
    if not root.is_dir():
        raise InputError(f"images folder {root} does not exist")
    missing = [n for n in names if not (root / n).is_file()]
    if missing and len(missing) == len(names):
        raise InputError(f"none of the {len(names)} images is under {root} (e.g. {missing[0]}); check --images")
    if missing and on_error != "skip":
        raise InputError(f"{len(missing)} of {len(names)} images are missing under {root}, e.g. {missing[0]}; "
                         "pass --on-error skip to record them as skipped")
    if missing:
        log.warning("%d images missing under %s; they will be recorded as skipped", len(missing), root)


def build_teacher_cache(out, *, images: str | Path, detections: str | Path, labelspace: LabelSpace,
                        annotations: str | Path | None = None, teacher: TeacherOptions,
                        pair_rule: PairRule = PairRule(), run: RunOptions = RunOptions(),
                        model_configs: tuple = (), split: str | None = None,
                        resources: ShardResources | None = None) -> Path:
    """Build (or resume) the teacher cache at ``out``. Returns the final store path.

    One run at a time holds ``out`` (``OUT.lock``, taken first and held to the end, the final
    rename included); a second is refused naming the first. ``model_configs``: open_clip
    config files or folders to register first, here and on every dask worker. ``split``:
    train, val or test, recorded as ``dataset.split`` (``hoi train`` refuses a test split);
    None: what HICO-DET's file names say, else not recorded. ``resources``: the teachers,
    decoders and writer process to use and keep (several builds in one process share them);
    None: the run's own, closed when it ends."""
    if split is not None and split not in SPLITS:
        raise InputError(f"split {split!r}: one of {', '.join(SPLITS)}")
    # absolute: dask workers may start in another directory
    out, images = Path(out).absolute(), Path(images).absolute()
    if run.scheduler:
        reach_scheduler(run.scheduler)  # before the model loads and the store is prepared
    req = _Request(out, images, detections, labelspace, annotations, teacher, pair_rule, run, model_configs, split)
    with exclusive(out, what="teacher-cache"):
        if resources is not None:
            return _build(req, resources)
        with ShardResources() as own:
            return _build(req, own)


# Seconds to wait for a dask scheduler to answer before saying it cannot be reached.
SCHEDULER_TIMEOUT = 10


def reach_scheduler(address: str, timeout: float = SCHEDULER_TIMEOUT) -> None:
    """Connect to the dask.distributed scheduler at ``address`` once, or raise InputError
    saying why (a malformed address at once; one that does not answer after ``timeout`` s)."""
    from dask.distributed import Client

    try:
        Client(address, timeout=timeout).close()
    except ValueError as e:
        raise InputError(f"--scheduler {address!r} is not a scheduler address ({e}); write it as "
                         "tcp://HOST:PORT (or tls://HOST:PORT)") from None
    except OSError as e:
        raise InputError(f"--scheduler {address}: no dask scheduler answered within {timeout:g} s ({e}); start "
                         "one there (dask scheduler) or check the address") from None


@dataclass(frozen=True)
class _Request:
    """The arguments of :func:`build_teacher_cache`; ``out`` and ``images`` absolute."""

    out: Path
    images: Path
    detections: str | Path
    labelspace: LabelSpace
    annotations: str | Path | None
    teacher: TeacherOptions
    pair_rule: PairRule
    run: RunOptions
    model_configs: tuple
    split: str | None = None


@dataclass(frozen=True)
class _Plan:
    """What the store is to hold, settled before it is opened: a store found at OUT (or its
    ``.wip``) is reused only when it matches."""

    clean: _CleanDetections
    pairs: _Pairs
    lay: Layout              # the shard geometry: each image's pair rows
    layout: S.LayoutAttrs    # the store's layout attribute: that geometry and every dim's size
    identity: dict           # teacher, pair_rule and dataset attributes
    levels: tuple[str, ...]  # the levels asked for (global, union)


def _build(req: _Request, resources: ShardResources) -> Path:
    """The run under the lock: inputs, teacher, plan, store, preparation, shards, finish."""
    t0 = time.perf_counter()  # the summary's rates count model loading and preparation too
    dets, ann = _read_inputs(req)  # every input check comes before the model loads
    device = resolve_device(req.run.device)
    job = _shard_job(req)
    t = teacher_of(job, resources)  # the local shards use this one
    p = _plan(req, t, device, dets, ann)
    if req.run.overwrite:  # only now that the model loaded and the inputs checked out
        cstore.remove(req.out)
    if _complete_store_at(req.out, p):
        return req.out
    cache = _create_or_resume(req.out, p)
    if not cache.attrs["prepared"]:
        _prepare(cache, req, t, device, dets, ann, p)
    summary = _run_remaining_shards(cache, job, p.lay, req.run, device, t0, resources)
    return _finish(cache, summary, dets.file_names, req.images)


def _read_inputs(req: _Request) -> tuple[Detections, Annotations | None]:
    """The detections and annotations, checked against each other and against ``--images``;
    sizes the detections leave unknown filled in."""
    dets = load_detections(req.detections, req.labelspace)
    if len(dets) == 0:
        raise InputError(f"{req.detections} lists no images; import detections for the split's image list")
    # before anything reads a file: a name must not reach outside --images
    check_inside(req.images, dets.file_names, source=str(req.detections))
    ann = read_annotations(req.annotations, req.labelspace) if req.annotations else None
    if ann is not None:
        check_inside(req.images, ann.file_names, source=str(req.annotations))
        ann = _align_annotations(ann, dets)
    _check_images(req.images, dets.file_names, req.run.on_error)
    _fill_unknown_sizes(dets, ann, req.images)
    _warn_if_incomplete(req.labelspace, len(dets))
    return dets, ann


def _warn_if_incomplete(labelspace: LabelSpace, n: int) -> None:
    """A warning when a known dataset's split has another number of images than it should."""
    expected = KNOWN_SPLIT_SIZES.get(labelspace.name)
    if expected and n not in expected:
        log.warning("%s has %d images; HICO-DET has %d (train) and %d (test): is the image list complete?",
                    labelspace.name, n, *expected)


def _shard_job(req: _Request) -> ShardJob:
    return ShardJob(store=str(cstore.wip_path(req.out)), images_root=str(req.images), teacher=req.teacher,
                    run=req.run, model_configs=tuple(str(Path(p).absolute()) for p in req.model_configs))


def _plan(req: _Request, t: Teacher, device, dets: Detections, ann: Annotations | None) -> _Plan:
    """Clean detections, pairs, shard layout and identity of the store this run makes."""
    teacher_attrs = _teacher_attrs(req.teacher, t, req.labelspace, device)
    clean = _clean_detections(dets)
    pairs = _pairs_of(clean, req.labelspace, req.pair_rule)
    dataset_attrs = _dataset_attrs(req.labelspace, dets, req.detections, req.annotations,
                                   req.split or split_of_names(dets.file_names))
    run = req.run
    lay = plan(np.diff(pairs.offsets), run.images_per_shard, run.image_chunk, run.pair_chunk)
    emb_dim = int(t.model.visual.proj.shape[1])
    layout = lay.record(num_classes=req.labelspace.num_classes, embed_dim=emb_dim, grid=t.grid,
                        num_detections=len(clean.box), num_gt=ann.num_pairs if ann is not None else 0)
    identity = {"teacher": teacher_attrs, "pair_rule": req.pair_rule.as_dict(), "dataset": dataset_attrs}
    return _Plan(clean, pairs, lay, layout, identity, S.LEVEL_CHOICES[run.levels])


def _complete_store_at(out: Path, p: _Plan) -> bool:
    """True when ``out`` is a finished store of this plan; a store made otherwise is refused."""
    if not out.exists():
        return False
    existing = cstore.TeacherCache(out)
    existing.check_matches(**p.identity)
    existing.check_levels(p.levels)  # a store holding more levels serves a run asking for fewer
    if not existing.complete:
        return False
    log.info("%s is already complete (same teacher, pair rule and dataset); nothing to do", out)
    return True


def _create_or_resume(out: Path, p: _Plan) -> cstore.TeacherCache:
    """The ``.wip`` store of ``out``: the one left by an earlier run of this plan, or a new one."""
    wip = cstore.wip_path(out)
    if not wip.exists():
        return cstore.create(out, layout=p.layout, levels=p.levels, **p.identity)
    cache = cstore.TeacherCache(wip, mode="r+")
    cache.check_matches(**p.identity)
    cache.check_levels(p.levels)
    if cache.layout != p.layout:
        raise cstore.CacheError(f"{cache.path}: made with other shard settings "
                                "(--images-per-shard, chunks); rerun with those, or --overwrite")
    log.info("resuming %s (levels %s): %d of %d shards done", cache.path, ", ".join(cache.levels),
             int(cache.shards_done().sum()), cache.num_shards)
    cache.sweep_stray_files()  # what the killed run was writing (its shards were not done: they run again)
    return cache


def _prepare(cache: cstore.TeacherCache, req: _Request, t: Teacher, device, dets: Detections, ann: Annotations | None,
             p: _Plan) -> None:
    """Write the prepare-time arrays (the coordinator alone: shards only read them)."""
    ls = req.labelspace
    text = text_embeddings(t, ls.prompts, req.teacher.templates, device=device)
    cache.write_prepared(_prepared_arrays(ls, dets, ann, text, p.clean, p.pairs, p.lay))
    log.info("prepared %s: %d images, %d detections (%d clipped, %d zero-area dropped), %d pairs in %d shards",
             cache.path, len(dets), len(p.clean.box), p.clean.clipped, p.clean.dropped, p.layout.num_pairs,
             p.lay.num_shards)


def _run_remaining_shards(cache: cstore.TeacherCache, job: ShardJob, lay: Layout, run: RunOptions, device,
                          t0: float, resources: ShardResources) -> dict:
    """Run every shard not yet done; returns the run's summary, stored as ``last_run``."""
    todo = [k for k in range(lay.num_shards) if not cache.shards_done()[k]]
    t_shards = time.perf_counter()
    stats = _run_shards(job, todo, run, lay, resources)
    t_shards = time.perf_counter() - t_shards
    summary = _summary(stats, time.perf_counter() - t0, t_shards)
    if not run.scheduler:  # (a cluster's workers decide for themselves)
        summary.update(zip(("decode", "writer"), helper_modes(run, device)))
    cache.set_attr("last_run", summary)
    return summary


def _finish(cache: cstore.TeacherCache, summary: dict, names: list[str], images: Path) -> Path:
    """Record the skipped images, finalise the store (unless every image was skipped) and
    report. Returns the final store path."""
    status = cache.read("images/status")
    skipped = [names[i] for i in np.flatnonzero(status == S.STATUS_SKIPPED)]
    cache.set_attr("skipped_images", skipped)
    n = len(names)
    if len(skipped) == n:  # an empty store marked complete would train on nothing
        raise cstore.CacheError(f"none of the {n} images under {images} could be read (e.g. {skipped[0]}); "
                                f"{cache.path} is left unfinished; fix --images and rerun with --overwrite")
    final = cstore.finalize(cache)
    _report(summary, skipped, final)
    return final


def _teacher_attrs(teacher: TeacherOptions, t, labelspace: LabelSpace, device) -> dict:
    """The teacher's identity as stored and compared: everything that changes its scores."""
    return S.TeacherAttrs(
        model=teacher.model, pretrained=teacher.pretrained, weights_sha256=t.weights_sha256,
        prompts=tuple(labelspace.prompts), templates=tuple(teacher.templates),
        prompts_sha256=prompts_sha256(labelspace.prompts, teacher.templates),
        crop_mode=teacher.crop_mode, union_margin=teacher.union_margin, input_size=t.image_size,
        global_size=t.global_size, mean=tuple(t.mean), std=tuple(t.std),
        interpolation=t.interpolation, resize_mode="whole image, " + teacher.crop_mode,
        precision="bf16-autocast" if device.type == "cuda" else "fp32",
    ).to_attrs()


def _dataset_attrs(labelspace: LabelSpace, dets: Detections, detections, annotations, split: str | None) -> dict:
    """The dataset's identity: label space, image list, detections and ground truth, by
    content, and the split when known (absent otherwise, as in caches made before it was)."""
    return S.DatasetAttrs(
        split=split,
        # the whole label space travels with the cache: readers need no other file
        labelspace=labelspace.to_dict(), labelspace_sha256=labelspace.fingerprint, num_images=len(dets),
        images_sha256=_sha256_arrays(np.array(dets.file_names), dets.sizes),
        detections_sha256=_sha256_file(detections), detector={
            k: dets.attrs.get(k) for k in ("detector", "weights", "score_threshold", "nms") if k in dets.attrs},
        annotations_sha256=_sha256_file(annotations) if annotations else None,
        absent=frozenset() if split else frozenset({"split"}),
    ).to_attrs()


def _prepared_arrays(ls: LabelSpace, dets: Detections, ann: Annotations | None, text: np.ndarray,
                     clean: _CleanDetections, pairs: _Pairs, lay: Layout) -> dict[str, np.ndarray]:
    """The prepare-time arrays of the store, by name, in the dtypes :data:`cache.schema.ARRAYS`
    declares (so the store casts nothing).

    ls: C classes; dets: N images; ann: G ground-truth pairs, or None for none;
    text: float32 [C, D] unit text embeddings; clean: the d detections kept; pairs: P pairs,
    laid out by ``lay`` on R >= P pair rows. Returned: text/embedding float32 [C, D],
    text/verb and text/object int32 [C], text/name str [C]; images/file_name str [N],
    images/size int32 [N, 2]; detections/offsets int64 [N + 1], detections/box float32
    [d, 4], detections/score float32 [d], detections/label int32 [d]; then the pairs/*
    arrays of :func:`_pair_arrays` and the gt/* arrays of :func:`_gt_arrays`.
    """
    return {
        "text/embedding": text, "text/verb": ls.hoi_verb.astype(np.int32),
        "text/object": ls.hoi_object.astype(np.int32),
        "text/name": np.array([ls.class_name(c) for c in range(ls.num_classes)]),
        "images/file_name": np.array(dets.file_names), "images/size": dets.sizes.astype(np.int32),
        "detections/offsets": clean.offsets, "detections/box": clean.box, "detections/score": clean.score,
        "detections/label": clean.label,
        **_pair_arrays(clean, pairs, lay),
        **_gt_arrays(ann, len(dets), ls.name),
    }


def _pair_arrays(clean: _CleanDetections, pairs: _Pairs, lay: Layout) -> dict[str, np.ndarray]:
    """pairs/* over the R pair rows of ``lay``: begin, end int64 [N]; image int32 [R] (-1 on
    padding rows); human, object int64 [R] (0 on padding); box float32 [R, 4] the union of
    the pair's two boxes (zeros on padding)."""
    rows = lay.num_pair_rows
    pair_image = np.full(rows, -1, np.int32)
    pair_h = np.zeros(rows, np.int64)
    pair_o = np.zeros(rows, np.int64)
    counts = lay.pair_end - lay.pair_begin
    dst = ragged.ranges(lay.pair_begin, counts)
    pair_image[dst] = ragged.owners(counts)
    pair_h[dst], pair_o[dst] = pairs.human, pairs.object
    pair_box = np.zeros((rows, 4), np.float32)
    box = clean.box
    pair_box[dst] = B.union_coord(box[pairs.human], box[pairs.object]) if len(pairs.human) else \
        np.zeros((0, 4), np.float32)
    return {"pairs/begin": lay.pair_begin, "pairs/end": lay.pair_end, "pairs/image": pair_image,
            "pairs/human": pair_h, "pairs/object": pair_o, "pairs/box": pair_box}


def _gt_arrays(ann: Annotations | None, num_images: int, labelspace_name: str) -> dict[str, np.ndarray]:
    """gt/* of G ground-truth pairs (none without annotations): offsets int64 [N + 1]; box_h,
    box_o float32 [G, 4]; hoi, verb, object int32 [G]."""
    g = ann if ann is not None else Annotations.from_lists([], [], [], labelspace_name)
    return {
        "gt/offsets": g.offsets if ann is not None else np.zeros(num_images + 1, np.int64),
        "gt/box_h": g.boxes_h.astype(np.float32), "gt/box_o": g.boxes_o.astype(np.float32),
        "gt/hoi": g.hoi.astype(np.int32), "gt/verb": g.verb.astype(np.int32), "gt/object": g.object.astype(np.int32),
    }


class _Progress:
    """A thread-safe tqdm over images, with crops/s beside images/s."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit="img", disable=not enabled, dynamic_ncols=True, desc="teacher-cache")
        self.crops, self.t0, self.lock = 0, time.perf_counter(), threading.Lock()

    def __call__(self, images: int, crops: int) -> None:
        with self.lock:
            self.crops += crops
            self.bar.update(images)
            self.bar.set_postfix(crops_s=f"{self.crops / max(time.perf_counter() - self.t0, 1e-9):.0f}")

    def close(self):
        self.bar.close()


def _run_shards(job: ShardJob, todo: list[int], run: RunOptions, lay: Layout,
                resources: ShardResources) -> list[ShardStats]:
    """The shards ``todo``, ``run.jobs`` at a time on threads of this process sharing
    ``resources``; with ``run.scheduler``, on that dask.distributed cluster, each worker with
    resources of its own."""
    import dask

    if not todo:
        return []
    total = sum(min((k + 1) * lay.images_per_shard, lay.num_images) - k * lay.images_per_shard for k in todo)
    if run.scheduler:
        from dask.distributed import Client, as_completed

        from pipeline.teacher.cluster import PLUGIN_NAME, ShardResourcesPlugin, run_shard_on_worker

        log.info("running %d shards on the dask.distributed cluster at %s", len(todo), run.scheduler)
        with Client(run.scheduler) as client:
            client.register_plugin(ShardResourcesPlugin(), name=PLUGIN_NAME)
            futures = [client.submit(run_shard_on_worker, job, k, pure=False) for k in todo]
            stats = []
            prog = _Progress(total, run.progress)
            for f in as_completed(futures):
                s = f.result()
                prog(s.images + len(s.skipped), s.crops)
                stats.append(s)
            prog.close()
            return stats
    prog = _Progress(total, run.progress)
    try:
        tasks = [dask.delayed(run_shard)(job, k, resources, prog, dask_key_name=f"shard-{k}") for k in todo]
        # the run's own threads, gone with it: dask's default pool outlives the call and a forked
        # child (dask's process scheduler, a user's fork) would wait on its dead threads
        with ThreadPoolExecutor(run.jobs, thread_name_prefix="shard") as pool:
            return list(dask.compute(*tasks, scheduler="threads", num_workers=run.jobs, pool=pool))
    finally:
        prog.close()


def _summary(stats: list[ShardStats], wall: float, shards_wall: float = 0.0) -> dict:
    """Run statistics; rates over the whole run (model loading and preparation included)."""
    images = sum(s.images for s in stats)
    crops = sum(s.crops for s in stats)
    busy = sum(s.wall_s for s in stats)
    return {"images": images, "crops": crops, "wall_s": round(wall, 3), "shards_wall_s": round(shards_wall, 3),
            "images_per_s": round(images / wall, 2) if wall else 0.0,
            "crops_per_s": round(crops / wall, 2) if wall else 0.0,
            "encoder_share": round(sum(s.encoder_s for s in stats) / busy, 3) if busy else 0.0,
            "data_wait_share": round(sum(s.data_wait_s for s in stats) / busy, 3) if busy else 0.0,
            "launch_share": round(sum(s.launch_s for s in stats) / busy, 3) if busy else 0.0,
            "collect_share": round(sum(s.collect_s for s in stats) / busy, 3) if busy else 0.0,
            "write_wait_share": round(sum(s.write_wait_s for s in stats) / busy, 3) if busy else 0.0}


def _report(s: dict, skipped, final) -> None:
    log.info("wrote %s: %d images, %d crops in %.1f s (%.1f images/s, %.0f crops/s); encoder busy %.0f%% of "
             "shard time, waiting for data %.0f%%", final, s["images"], s["crops"], s["wall_s"], s["images_per_s"],
             s["crops_per_s"], 100 * s["encoder_share"], 100 * s["data_wait_share"])
    if s["data_wait_share"] > 0.2:
        log.warning("the encoder waited for decoded images %.0f%% of the time: raise --workers",
                    100 * s["data_wait_share"])
    if skipped:
        log.warning("%d image(s) were unreadable and recorded as skipped, e.g. %s", len(skipped), skipped[0])

