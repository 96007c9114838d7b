"""A training run killed at every file operation of a checkpoint save: the next plain run
finishes it and ends with the weights of an uninterrupted run, leaving nothing behind.

The kill is a forked child whose ``os.rename``, ``os.replace``, ``os.unlink``, ``os.rmdir``
and ``os.fsync`` (what ``Path``, ``shutil.rmtree`` and the savers go through) end the
process at the Nth call during a save, so no external tool is needed."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest
import torch

from cache.synthetic import make_synthetic_cache
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


def _run_killed_at(cache_path, out, n: int, counter) -> None:
    """Child: train CONFIG into ``out``, ending the process at the ``n``-th file operation
    made inside a checkpoint save (never, for n = 0); ``counter`` gets the number made."""
    inside = [False]
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
    save = ckpt.save_checkpoint

    def watched(*args, **kwargs):
        inside[0] = True
        try:
            return save(*args, **kwargs)
        finally:
            inside[0] = False

    ckpt.save_checkpoint = watched
    train(cache_path, out, CONFIG)
    os._exit(0)


def _child(cache_path, out, n: int) -> tuple[int, int]:
    ctx = multiprocessing.get_context("fork")  # the child inherits the imports: a kill costs milliseconds
    counter = ctx.Value("i", 0)
    p = ctx.Process(target=_run_killed_at, args=(cache_path, out, n, counter))
    p.start()
    p.join()
    return p.exitcode, counter.value


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
