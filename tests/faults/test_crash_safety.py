"""A training run killed at every file operation of a checkpoint save, and a teacher-cache
build killed at every file operation of its shards and its finalize: the next plain run
finishes it and ends with what an uninterrupted run makes, leaving nothing behind.

The kill is a forked child whose ``os.rename``, ``os.replace``, ``os.unlink``, ``os.rmdir``
and ``os.fsync`` (what ``Path``, ``shutil.rmtree``, zarr's chunk writes and the savers go
through) end the process at the Nth call made inside the watched function, so no external
tool is needed."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
import torch

from bench.synthetic_cache import make_synthetic_cache
from trainer import checkpoint as ckpt
from trainer.checkpoint import load_weights
from trainer.config import TrainConfig
from trainer.engine import METRICS_FILE, train, train_or_reuse

WORLD = dict(num_classes=12, embed_dim=16, grid=(6, 6), images_per_shard=16, image_chunk=8, pair_chunk=32)
CONFIG = TrainConfig(epochs=2, batch_size=8, hidden_dim=16, progress=False, threads=1, device="cpu")
FILE_OPS = ("rename", "replace", "unlink", "rmdir", "fsync")
KILLED = 137

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("crash") / "train", num_images=24, pairs_per_image=3,
                                seed=0, split="train", with_gt=False, **WORLD)


def _killed_at(n: int, counter, watched: list[tuple[object, str]], job) -> None:
    """Child: run ``job()``, ending the process at the ``n``-th file operation made inside one
    of the ``watched`` functions (module, name) (never, for n = 0); ``counter`` gets the number made."""
    inside = [0]
    calls = [0]

    def counted(real):
        def op(*args, **kwargs):
            if inside[0]:
                calls[0] += 1
                counter.value = calls[0]
                if calls[0] == n:
                    os._exit(KILLED)
            return real(*args, **kwargs)
        return op

    for name in FILE_OPS:
        setattr(os, name, counted(getattr(os, name)))

    def watch(fn):
        def call(*args, **kwargs):
            inside[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                inside[0] -= 1
        return call

    for module, name in watched:
        setattr(module, name, watch(getattr(module, name)))
    job()
    os._exit(0)


def _fork(n: int, watched, job) -> tuple[int, int]:
    ctx = multiprocessing.get_context("fork")  # the child inherits the imports: a kill costs milliseconds
    counter = ctx.Value("i", 0)
    p = ctx.Process(target=_killed_at, args=(n, counter, watched, job))
    p.start()
    p.join()
    return p.exitcode, counter.value


def _child(cache_path, out, n: int) -> tuple[int, int]:
    """Train CONFIG into ``out``, killed at the ``n``-th file operation of a checkpoint save."""
    return _fork(n, [(ckpt, "save_checkpoint")], lambda: train(cache_path, out, CONFIG))


def _files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names}


def test_a_kill_at_any_file_operation_of_a_save_is_finished_by_the_next_run(cache, tmp_path):
    reference = tmp_path / "reference"
    code, total = _child(cache, reference, 0)
    assert code == 0 and total >= 2 * 6  # two saves: renames, fsyncs, unlinks and rmdirs of each
    want, files = load_weights(reference / "checkpoint"), _files(reference)
    assert not any(".tmp" in f or ".old" in f for f in files)
    for n in range(1, total + 1):
        out = tmp_path / f"killed-{n}"
        code, _ = _child(cache, out, n)
        assert code == KILLED, n
        train_or_reuse(cache, out, CONFIG)  # the next plain run
        got = load_weights(out / "checkpoint")
        assert all(torch.equal(got[k], want[k]) for k in want), f"killed at file operation {n}"
        assert _files(out) == files, f"killed at file operation {n}: {sorted(_files(out) ^ files)}"
        epochs = [json.loads(line)["epoch"] for line in (out / METRICS_FILE).read_text().splitlines()]
        assert epochs == [1, 2], f"killed at file operation {n}"


def test_a_torn_last_metrics_line_is_dropped_and_the_run_resumes(cache, tmp_path):
    out = tmp_path / "run"
    train(cache, out, CONFIG.replace(epochs=1))
    with (out / METRICS_FILE).open("a") as f:
        f.write('{"epoch": 2, "lo')  # killed (or out of disk) in the middle of the next line
    train(cache, out, resume=True, epochs=2)
    epochs = [json.loads(line)["epoch"] for line in (out / METRICS_FILE).read_text().splitlines()]
    assert epochs == [1, 2]
    (out / METRICS_FILE).write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(Exception, match="line 2 is not an epoch's metrics"):
        train(cache, out, resume=True, epochs=3)


# -- the teacher cache ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tinyworld import make_world_with_model

    root = tmp_path_factory.mktemp("world")
    paths = make_world_with_model(root, num_images=6)
    return paths


def _build(world, out):
    from tinyworld import MODEL

    from hoidata.labelspace import LabelSpace
    from pipeline.teacher.options import RunOptions, TeacherOptions
    from pipeline.teacher.run import build_teacher_cache

    return build_teacher_cache(
        out, images=world["images"], detections=world["detections"], annotations=world["annotations"],
        labelspace=LabelSpace.load(world["labelspace"]),
        teacher=TeacherOptions(model=MODEL, pretrained=str(world["checkpoint"])),
        run=RunOptions(images_per_shard=3, workers=0, jobs=1, writer="thread", progress=False))


def _chunks(store) -> dict[str, bytes]:
    return {f: (store / f).read_bytes() for f in _files(store) if f.rsplit("/", 1)[-1].startswith("c.")}


def test_a_teacher_cache_killed_at_any_file_operation_of_a_shard_or_finalize_resumes_to_the_same_store(
        world, tmp_path):
    """Every chunk write (zarr renames a temporary), every fsync before a done flag, the flag,
    and finalize's sweep, sync and rename."""
    from cache import store as cstore
    from cache.store import open_cache
    from pipeline.teacher import run

    watched = [(run, "run_shard"), (run.cstore, "finalize")]
    assert run.cstore is cstore
    reference = tmp_path / "reference" / "cache.zarr"
    code, total = _fork(0, watched, lambda: _build(world, reference))
    assert code == 0 and total > 20
    want = _chunks(reference)
    for n in range(1, total + 1):
        out = tmp_path / f"killed-{n}" / "cache.zarr"
        code, _ = _fork(n, watched, lambda out=out: _build(world, out))
        assert code == KILLED, n
        # the next plain run, forked too: the pipeline's thread pools must never start in this
        # process, whose later forks would inherit them without their threads
        assert _fork(0, [], lambda out=out: _build(world, out))[0] == 0, f"killed at file operation {n}: no resume"
        cache = open_cache(out)
        assert _chunks(out) == want, f"killed at file operation {n}"
        assert cache.stray_files() == [] and cache.verify() == [], f"killed at file operation {n}"
        assert sorted(p.name for p in out.parent.iterdir()) == ["cache.zarr"], f"killed at file operation {n}"
