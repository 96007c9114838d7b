"""Fault injection: damaged and lost chunks, damaged metadata, a kill while the store is
created, two runs on one output, stale and foreign locks, hostile image names, stores of
the global level only, stores of an older format. Each test reproduces one fault on a tiny
world and asserts what the README's "What survives what" table says happens."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import rebind
from PIL import Image
from tinyworld import build_cache as build
from tinyworld import make_world_with_model

from bench.synthetic_cache import make_synthetic_cache
from cache import schema as S
from cache import store as cstore
from cache.store import CacheError, open_cache, wip_path
from hoicore.files import UnsafeNameError, inside
from hoicore.lock import LockError, acquire, exclusive, holder_of, lock_path
from hoidata.detections import Detections, load_detections, save_detections
from hoidata.labelspace import LabelSpace

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    paths = make_world_with_model(root, num_images=8)
    return paths


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    return build(world, tmp_path_factory.mktemp("ref") / "cache.zarr")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small complete store with several shards and chunks along images and pairs."""
    return make_synthetic_cache(tmp_path_factory.mktemp("syn") / "s.zarr", num_images=48, pairs_per_image=3,
                                num_classes=8, embed_dim=8, grid=(2, 2), images_per_shard=16, image_chunk=8,
                                pair_chunk=16, split="test")


@pytest.fixture
def copy(synthetic, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(synthetic, out)
    return out


def chunk_bytes(path) -> dict:
    """Every chunk file of every array, by relative path."""
    path = Path(path)
    found = {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("c.*")) if p.is_file()}
    assert found
    return found


def chunk_file(store: Path, name: str) -> tuple[Path, str, int]:
    """The file, key and index of a chunk of ``name``: the second one where there are several."""
    arr = zarr.open_array(str(store / name), mode="r")
    index = 1 if arr.shape[0] > arr.chunks[0] else 0
    key = S.chunk_key(name, index, arr.ndim)
    return store / key, key, index


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGED = ["global/dense", "pairs/box", "detections/box", "gt/box_h", "gt/box_o", "gt/hoi", "gt/offsets",
           "text/embedding", "pairs/human", "union/score", "images/status"]


# -- damaged and lost chunks ------------------------------------------------------------------

@pytest.mark.parametrize("name", DAMAGED)
def test_flipped_bytes_name_the_array_and_chunk_on_read_and_in_verify(copy, name):
    path, key, index = chunk_file(copy, name)
    flip(path)
    cache = open_cache(copy)  # listing finds every file: opening is fine, reading is not
    with pytest.raises(CacheError, match=rf"chunk {re.escape(key)} of {name} \(\w[\w -]* \d+\.\.\d+\) is damaged"):
        cache.read(name)
    a, _ = cache.chunk_rows(name, index)
    with pytest.raises(CacheError, match=re.escape(key)):  # a read of one row inside it too
        cache.read(name, slice(a, a + 1))
    problems = cache.verify()
    assert any(p.startswith(f"{name}: 1 damaged chunk(s)") and key in p for p in problems), problems


@pytest.mark.parametrize("name", DAMAGED + ["global/embedding", "union/embedding", "images/shard_done"])
def test_lost_chunk_is_refused_on_open_and_reported_by_verify(copy, name):
    path, key, _ = chunk_file(copy, name)
    path.unlink()
    if name == "images/shard_done":  # its flag reads back False: a complete store with a shard not done
        message = rf"images/shard_done lacks 1 chunk file.*first: {re.escape(key)}"
    else:
        message = rf"{name} lacks 1 chunk file\(s\) that its layout says were written \(first: {re.escape(key)}"
    with pytest.raises(CacheError, match=message):
        open_cache(copy)
    problems = open_cache(copy, check_chunks=False).verify()
    assert any(p.startswith(f"{name}: 1 chunk file(s) missing") for p in problems), problems


def test_the_teacher_baseline_refuses_a_damaged_store(copy):
    """The issue's case: a deleted detections/box chunk gave Full mAP 0.00 with exit 0."""
    from trainer.predict import predict

    path, key, _ = chunk_file(copy, "detections/box")
    flip(path)
    with pytest.raises(CacheError, match=re.escape(key)):
        predict(copy, model="teacher", device="cpu")
    path.unlink()
    with pytest.raises(CacheError, match="detections/box lacks 1 chunk"):
        predict(copy, model="teacher", device="cpu")


# -- misplaced chunks: each checksum holds, but not under its key ------------------------------

def swap(a: Path, b: Path) -> None:
    """What a restore, a sync tool or a hand repair can do: two chunk files change places."""
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


MISPLACED = r"holds bytes that were not written under that name \(a chunk moved, restored or synced"


def test_chunks_swapped_inside_an_array_are_refused_by_every_reader_and_verify(copy):
    """The audit's case: union/score c.0.0 and c.1.0 swapped gave the teacher a wrong mAP, exit 0."""
    from trainer.predict import predict

    swap(copy / "union" / "score" / "c.0.0", copy / "union" / "score" / "c.1.0")
    cache = open_cache(copy)
    # zarr reads a whole array's chunks concurrently: either swapped chunk may be the one named
    either = (r"chunk union/score/c\.(0\.0 of union/score \(pair rows 0\.\.15\)"
              r"|1\.0 of union/score \(pair rows 16\.\.31\)) ")
    with pytest.raises(CacheError, match=either + MISPLACED):
        cache.read("union/score")
    with pytest.raises(CacheError, match=MISPLACED):
        predict(copy, model="teacher", device="cpu")
    problems = cache.verify()
    assert any(p.startswith("union/score: 2 misplaced chunk(s)") and "union/score/c.0.0" in p for p in problems), \
        problems


@pytest.mark.parametrize("a, b", [
    ("union/score/c.1.0", "union/embedding/c.1.0"),   # the same rows of two arrays
    ("gt/box_h/c.0.0", "gt/box_o/c.0.0"),             # prepare-time arrays of one shape
    ("global/dense/c.0.0.0.0", "global/dense/c.2.0.0.0"),
])
def test_chunks_swapped_between_or_inside_arrays_are_found_by_verify(copy, a, b):
    swap(copy / a, copy / b)
    problems = open_cache(copy).verify()
    for key in (a, b):
        name = key.rsplit("/", 1)[0]
        assert any(p.startswith(f"{name}: ") and "misplaced" in p for p in problems), problems


def test_training_refuses_a_cache_with_swapped_dense_chunks(tmp_path):
    from trainer.config import TrainConfig
    from trainer.engine import train

    path = make_synthetic_cache(tmp_path / "train.zarr", num_images=32, pairs_per_image=2, num_classes=8,
                                embed_dim=8, grid=(2, 2), images_per_shard=16, image_chunk=8, pair_chunk=16)
    swap(path / "global" / "dense" / "c.1.0.0.0", path / "global" / "dense" / "c.2.0.0.0")
    cfg = TrainConfig(epochs=1, batch_size=8, hidden_dim=8, progress=False, threads=1, device="cpu")
    with pytest.raises(CacheError, match=r"global/dense/c\.[12]\.0\.0\.0 of global/dense .*" + MISPLACED):
        train(path, tmp_path / "run", cfg)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_an_unchanged_copy_reads_and_swapping_equal_chunks_is_harmless(copy):
    """Placement is judged by content: a copied store reads, and two chunks of the same bytes
    (the done flags of two finished shards) may change places."""
    swap(copy / "images" / "shard_done" / "c.0", copy / "images" / "shard_done" / "c.1")
    cache = open_cache(copy)
    assert cache.placement_checked and cache.verify() == []


def test_undecodable_compressed_chunk_with_a_valid_checksum_is_named(copy):
    import google_crc32c

    path, key, _ = chunk_file(copy, "detections/box")
    junk = b"\x28\xb5\x2f\xfd" + os.urandom(64)  # a zstd magic number, then garbage
    path.write_bytes(junk + np.uint32(google_crc32c.value(junk)).tobytes())
    rebind(copy)  # written so from the start: its checksum and its placement both hold
    with pytest.raises(CacheError, match=rf"chunk {re.escape(key)} of detections/box .* is damaged"):
        open_cache(copy).read("detections/box")


@pytest.mark.parametrize("file", ["zarr.json", "global/dense/zarr.json", "gt/hoi/zarr.json"])
def test_truncated_metadata_is_named(copy, file):
    meta = copy / file
    meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 2])
    with pytest.raises(CacheError, match=rf"{re.escape(str(meta))} is not readable JSON"):
        open_cache(copy)


@pytest.mark.parametrize("damage, message", [
    ("detection outside its image", r"detections/box: 1 box\(es\) empty or outside their image"),
    ("empty detection", r"detections/box: 1 box\(es\) empty or outside"),
    ("union box not the pair's", r"pairs/box: 1 union box\(es\)"),
    ("gt box outside its image", r"gt/box_o: 1 box\(es\) inverted or outside their image"),
    ("gt verb of another class", "gt/verb or gt/object disagrees"),
    ("gt offsets", "gt/offsets is not a valid CSR index"),
    ("detection offsets", "detections/offsets is not a valid CSR index"),
    ("status code", "images/status holds unknown codes"),
    ("dense map NaN", "global/dense has non-finite values"),
    ("global score", "global/score differs from embedding x text"),
    ("global score by one logit", "global/score differs from embedding x text"),  # 0.01 at temperature 0.01
    ("pair of another image", "pairs/object names a detection outside its image"),
])
def test_verify_checks_values_against_each_other(copy, damage, message):
    """Damage with valid checksums (written through zarr): the checks of values find it."""
    g = zarr.open_group(str(copy), mode="r+")
    size = np.asarray(g["images/size"][0])
    if damage == "detection outside its image":
        g["detections/box"][0] = [1, 1, size[0] + 5, 10]
    elif damage == "empty detection":
        b = np.asarray(g["detections/box"][0])
        g["detections/box"][0] = [b[0], b[1], b[0], b[3]]
    elif damage == "union box not the pair's":
        g["pairs/box"][0] = np.asarray(g["pairs/box"][0]) + np.float32(0.5)
    elif damage == "gt box outside its image":
        g["gt/box_o"][0] = [1, 1, 10, size[1] + 20]
    elif damage == "gt verb of another class":
        g["gt/verb"][0] = int(np.asarray(g["gt/verb"][0])) + 1
    elif damage == "gt offsets":
        offs = np.asarray(g["gt/offsets"][:])
        g["gt/offsets"][-1] = offs[-1] + 3
    elif damage == "detection offsets":
        g["detections/offsets"][2] = 10**6
    elif damage == "status code":
        g["images/status"][3] = 7
    elif damage == "dense map NaN":
        g["global/dense"][5, 0, 0, 0] = np.nan
    elif damage == "global score":
        g["global/score"][2] = np.asarray(g["global/score"][2]) + np.float16(0.25)
    elif damage == "global score by one logit":
        g["global/score"][2, 0] = np.asarray(g["global/score"][2, 0]) + np.float16(0.01)
    else:
        far = int(np.asarray(g["detections/offsets"][-2]))  # the last image's first detection
        g["pairs/object"][0] = far
    rebind(copy)
    problems = open_cache(copy).verify()
    assert any(re.search(message, p) for p in problems), problems


def test_verify_cli_names_the_damaged_chunk(copy):
    from hoi.cli import main

    path, key, _ = chunk_file(copy, "gt/box_h")
    flip(path)
    out = CliRunner().invoke(main, ["cache", "verify", str(copy)])
    assert out.exit_code == 1 and key in out.output
    path.unlink()
    out = CliRunner().invoke(main, ["cache", "verify", str(copy)])
    assert out.exit_code == 1 and "gt/box_h: 1 chunk file(s) missing" in out.output


def test_every_chunk_is_written_even_when_it_equals_the_fill_value(tmp_path):
    """A shard of images without pairs or detections writes zero-filled chunks: their files must
    exist, or they would read as lost."""
    path = make_synthetic_cache(tmp_path / "z.zarr", num_images=16, pairs_per_image=1, num_classes=4, embed_dim=8,
                                grid=(2, 2), images_per_shard=8, image_chunk=4, pair_chunk=4, with_gt=False)
    c = open_cache(path)
    assert c.missing_chunks() == {} and c.verify() == []
    assert sum(len(v) for v in c.expected_chunks().values()) == len(list(path.rglob("c.*")))


# -- older formats ----------------------------------------------------------------------------

def test_a_hoi_cache_1_store_is_refused_by_name_and_overwrite_may_delete_it(copy, tmp_path):
    g = zarr.open_group(str(copy), mode="r+")
    g.attrs["format"] = "hoi-cache/1"
    with pytest.raises(CacheError, match=r"a hoi-cache/1 store .*reads 'hoi-cache/2'; rebuild it with this version"):
        open_cache(copy)
    cstore.remove(copy)
    assert not copy.exists()
    # a hoi-cache/1 .wip killed before its attributes were written (that version made arrays first)
    half = wip_path(tmp_path / "old.zarr")
    (half / "images" / "shard_done").mkdir(parents=True)
    (half / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (half / "images" / "shard_done" / "zarr.json").write_text("{}")
    cstore.remove(tmp_path / "old.zarr")
    assert not half.exists()
    other = tmp_path / "photos"
    other.mkdir()
    with pytest.raises(CacheError, match="is not a teacher cache; refusing to delete it"):
        cstore.remove(other)


# -- creation killed --------------------------------------------------------------------------

def _fail_creation_after(monkeypatch, n: int, exc=RuntimeError):
    real, calls = zarr.Group.create_array, []

    def create_array(self, *a, **kw):
        calls.append(1)
        if len(calls) > n:
            raise exc("simulated kill during creation")
        return real(self, *a, **kw)

    monkeypatch.setattr(zarr.Group, "create_array", create_array)


def test_a_kill_while_the_store_is_created_leaves_nothing_that_blocks_a_rerun(world, reference, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "cache.zarr"
    monkeypatch.setattr(cstore, "_discard", lambda p: None)  # kill -9: no clean-up runs
    _fail_creation_after(monkeypatch, 10)
    with pytest.raises(RuntimeError, match="simulated kill"):
        build(world, out)
    leftovers = list(tmp_path.glob("cache.zarr.wip.tmp-*"))
    assert len(leftovers) == 1 and not wip_path(out).exists() and not lock_path(out).exists()
    monkeypatch.undo()
    final = build(world, out)  # the plain rerun
    assert final == out and not list(tmp_path.glob("cache.zarr.wip.tmp-*"))
    assert chunk_bytes(out) == chunk_bytes(reference)


def _disk_full(message):
    return OSError(28, f"No space left on device ({message})")


@pytest.mark.parametrize("exc", [KeyboardInterrupt, _disk_full], ids=["ctrl-c", "disk-full"])
def test_ctrl_c_while_the_store_is_created_cleans_up(world, tmp_path, monkeypatch, exc):
    out = tmp_path / "cache.zarr"
    _fail_creation_after(monkeypatch, 3, exc)
    with pytest.raises((KeyboardInterrupt, OSError)):
        build(world, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- two runs on one output -------------------------------------------------------------------

HOLD = """
import sys, time
from hoicore.lock import acquire, LockError
while not __import__("os").path.exists(sys.argv[2]):
    time.sleep(0.005)
try:
    lock = acquire(sys.argv[1], what="test")
except LockError as e:
    print("refused", e, flush=True)
else:
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holder(out: Path, go: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(go), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(world, tmp_path,
                                                                                           monkeypatch):
    import pipeline.teacher.run as run_mod

    out, go = tmp_path / "cache.zarr", tmp_path / "go"
    go.touch()
    first = _holder(out, go, 120)
    assert first.stdout.readline().strip() == "held"
    loaded = []
    real_teacher_of = run_mod.teacher_of
    monkeypatch.setattr(run_mod, "teacher_of", lambda job, res: loaded.append(1) or real_teacher_of(job, res))
    with pytest.raises(LockError, match=rf"in use by another teacher-cache run .*pid {first.pid} on host "
                                        rf"{re.escape(socket.gethostname())}, started \d{{4}}-"):
        build(world, out)
    assert not loaded and not wip_path(out).exists()  # refused at once: no model, no store
    first.kill()  # kill -9: its lock file stays
    first.wait()
    assert holder_of(out)["pid"] == first.pid
    assert build(world, out) == out and loaded  # the dead holder's lock is taken over
    assert not lock_path(out).exists()  # and released at the end


def test_a_stale_lock_is_taken_over_by_exactly_one_of_several_runs(tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(json.dumps({**_here(), "pid": dead.pid, "started": "earlier"}))
    procs = [_holder(out, go, 3) for _ in range(6)]
    time.sleep(1.0)  # let them all start and wait for the signal
    go.touch()
    lines = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.wait()
    assert sum(line == "held" for line in lines) == 1, lines
    winner = procs[[line == "held" for line in lines].index(True)].pid
    assert all(f"pid {winner} " in line for line in lines if line != "held"), lines


def _here() -> dict:
    """What a lock taken by a process of this host, boot and PID namespace records of it."""
    from hoicore import lock

    return {"host": socket.gethostname(), "boot_id": lock._boot_id(), "pid_ns": lock._pid_namespace()}


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "node-17.cluster", "started": "2026-01-01T00:00:00"}))
    with pytest.raises(LockError, match=r"pid 1 on host node-17.cluster.*another host.*never taken over "
                                        r"automatically.*delete .*out\.lock"):
        acquire(out)
    assert holder_of(out)["host"] == "node-17.cluster"


@pytest.mark.parametrize("differs, why", [
    ({"pid_ns": "pid:[1]"}, "another PID namespace: a container that shares this host name"),
    ({"boot_id": "0" * 36}, "another boot of this host, or another machine of the same name"),
    ({"boot_id": None, "pid_ns": None, "drop": True}, "written by an earlier version"),
])
def test_a_dead_looking_holder_of_the_same_host_name_that_cannot_be_judged_keeps_its_lock(tmp_path, differs, why):
    """The audit's case: containers with host networking share a host name, not process IDs:
    a live holder there looks dead here."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {**_here(), "pid": dead.pid, "started": "earlier", **differs}
    if holder.pop("drop", False):
        del holder["boot_id"], holder["pid_ns"]
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps(holder))
    with pytest.raises(LockError, match=rf"\({re.escape(why)}.*never taken over automatically.*delete"):
        acquire(out)
    assert holder_of(out)["pid"] == dead.pid


def test_a_pid_reused_by_a_later_process_does_not_hold_the_lock(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({**_here(), "pid": os.getpid(), "started": "before boot", "pid_start": 1}))
    with exclusive(out) as lock:
        assert holder_of(out)["token"] == lock.holder["token"]
    assert not lock_path(out).exists()


def test_a_lock_without_a_holder_is_not_taken_over(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text("")
    old = time.time() - 60
    os.utime(lock_path(out), (old, old))
    with pytest.raises(LockError, match="names no holder"):
        acquire(out)


def test_an_export_folder_is_locked_too(tmp_path):
    from hoidata import matlab

    out = tmp_path / "matlab"
    with exclusive(out, what="other"):
        with pytest.raises(LockError, match="in use by another export-mat run"):
            matlab.export(out, [], None, LabelSpace.load("hico_det"))


# -- hostile image names ----------------------------------------------------------------------

def _dets_with_name(world, tmp_path, name: str) -> Path:
    dets = load_detections(world["detections"])
    names = list(dets.file_names)
    names[1] = name
    out = tmp_path / "hostile.h5"
    save_detections(Detections(names, dets.sizes, dets.offsets, dets.boxes, dets.scores, dets.labels, dets.attrs), out)
    return out


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/hostname", "a/../../x.jpg", "link.jpg"])
def test_names_leaving_the_images_folder_are_refused_before_the_model_loads(world, tmp_path, monkeypatch, name):
    import pipeline.teacher.run as run_mod

    images = tmp_path / "images"
    shutil.copytree(world["images"], images)
    (tmp_path / "outside.jpg").write_bytes((world["images"] / "img_000.jpg").read_bytes())
    (images / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    monkeypatch.setattr(run_mod, "teacher_of", lambda job, res: pytest.fail("the model loaded"))
    dets = _dets_with_name(world, tmp_path, name)
    with pytest.raises(UnsafeNameError, match=rf"hostile\.h5: image name {re.escape(repr(name))} "):
        build({**world, "images": images}, tmp_path / "cache.zarr", detections=dets, annotations=None)
    assert not wip_path(tmp_path / "cache.zarr").exists()


def test_inside_accepts_names_that_stay_inside(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.jpg").touch()
    (tmp_path / "sub" / "same.jpg").symlink_to(tmp_path / "sub" / "x.jpg")  # a link that stays inside
    for name in ("x.jpg", "sub/x.jpg", "sub/../x.jpg", "sub/same.jpg", "missing.jpg"):
        assert inside(tmp_path, name) == tmp_path / name
    for name in ("", "..", "sub/../../x.jpg", str(tmp_path / "x.jpg")):
        with pytest.raises(UnsafeNameError):
            inside(tmp_path, name)


def test_the_detector_stage_refuses_listed_names_outside_the_folder(tmp_path):
    from pipeline.detection import stage as stage

    (tmp_path / "images").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg\n../b.jpg\n")
    with pytest.raises(stage.DetectStageError, match=r"list\.txt: image name '\.\./b\.jpg' leads outside"):
        stage.list_images(tmp_path / "images", listing)


def test_the_detector_stage_refuses_a_symlink_out_of_the_images_folder(tmp_path):
    """One rule for hoi detect and teacher-cache: a file of the folder that leads out of it."""
    from pipeline.detection import stage as stage

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.jpg")
    (tmp_path / "images" / "b.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(stage.DetectStageError, match=r"image name 'b\.jpg' leads outside the images folder"):
        stage.list_images(tmp_path / "images")
    (tmp_path / "images" / "b.jpg").unlink()
    (tmp_path / "images" / "c.jpg").symlink_to(tmp_path / "images" / "a.jpg")  # a link that stays inside
    assert stage.list_images(tmp_path / "images")[0] == ["a.jpg", "c.jpg"]


def test_names_from_data_files_stay_inside_their_folders(tmp_path):
    """visualize (predictions), the per-image-folder import (image list) and the annotation
    reader (image sizes from headers) join a file's names to a folder: none leaves it."""
    from hoi.cli import main
    from hoidata.annotations import AnnotationError, read_qpic_json
    from hoidata.detections import DetectionsError, import_per_image_folder

    ls = LabelSpace.load("hico_det")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.jpg")
    (tmp_path / "secret.json").write_text(json.dumps({"boxes": [], "scores": [], "labels": [], "size": [8, 8]}))
    hostile = "../secret.jpg"

    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"box_format": "coord", "predictions": {hostile: [[0, 0, 4, 4, 1, 1, 5, 5, 0, 0.9]]}}))
    out = CliRunner().invoke(main, ["visualize", "--predictions", str(preds), "--images", str(tmp_path / "images"),
                                    "--labelspace", "hico_det", "-o", str(tmp_path / "fig")])
    assert out.exit_code != 0 and "p.json: image name '../secret.jpg' leads outside the images folder" in out.output
    assert not (tmp_path / "fig" / "secret.png").exists()

    with pytest.raises(DetectionsError, match=r"image name '\.\./secret\.json' leads outside the detections folder"):
        import_per_image_folder(tmp_path / "images", [(1, hostile, 8, 8)], ls)

    ann = tmp_path / "test_hico.json"
    ann.write_text(json.dumps([{"file_name": hostile, "annotations": [], "hoi_annotation": []}]))
    with pytest.raises(AnnotationError, match=r"test_hico\.json: image name '\.\./secret\.jpg' leads outside"):
        read_qpic_json(ann, ls, image_root=tmp_path / "images")


# -- the global level alone -------------------------------------------------------------------

def test_a_global_only_store_has_no_union_data_and_did_no_crop_work(world, reference, tmp_path, monkeypatch):
    from pipeline.teacher.encoder import Encoder

    monkeypatch.setattr(Encoder, "union_pass", lambda *a, **kw: pytest.fail("a union crop was encoded"))
    out = build(world, tmp_path / "global.zarr", levels="global")
    monkeypatch.undo()
    c = open_cache(out)
    assert c.levels == ("global",) and c.attrs["levels"] == ["global"]
    assert not (out / "union").exists() and c.attrs["last_run"]["crops"] == 0
    assert c.verify() == []
    with pytest.raises(CacheError, match=rf"^{re.escape(str(out))} holds no union level \(levels: global\): the "
                                         r"teacher baseline scores union crops; rebuild it with hoi teacher-cache "
                                         r"--levels all$"):
        c.require_level("union", why="the teacher baseline scores union crops")
    with pytest.raises(CacheError, match="holds no union level.*union/score was asked for"):
        c.read("union/score")
    c.require_level("global")
    # the global level and every prepare-time array: the same bytes as the full store's
    full = chunk_bytes(reference)
    assert chunk_bytes(out) == {k: v for k, v in full.items() if not k.startswith("union")}
    # a store with more levels serves a run asking for fewer; one with fewer is refused
    assert build(world, reference, levels="global") == reference
    with pytest.raises(CacheError, match=r"holds levels \['global'\], but levels \['global', 'union'\] were asked"):
        build(world, out)
    # rescoring touches only the levels held
    from pipeline.teacher.rescore import rescore

    prompts = [p.upper() for p in c.attrs["teacher"]["prompts"]]
    new = open_cache(rescore(out, tmp_path / "rescored.zarr", prompts=prompts))
    assert new.levels == ("global",) and new.verify() == []
    assert not np.array_equal(new.read("global/score"), c.read("global/score"))


def test_verify_and_inspect_of_a_global_only_store_see_its_level_only(tmp_path):
    from hoi.cli import main

    src = make_synthetic_cache(tmp_path / "g.zarr", num_images=16, pairs_per_image=2, num_classes=4, embed_dim=8,
                               grid=(2, 2), images_per_shard=8, image_chunk=4, pair_chunk=8, levels=("global",))
    out = CliRunner().invoke(main, ["cache", "verify", str(src)])
    assert out.exit_code == 0 and "complete and consistent" in out.output
    out = CliRunner().invoke(main, ["cache", "inspect", str(src)])
    assert out.exit_code == 0 and "levels: global" in out.output and "union/" not in out.output


# -- outputs written whole or not at all -------------------------------------------------------

def _writers(tiny_ls, tmp_path):
    """Each output writer of results and data files, as (name, write(path))."""
    from conftest import make_gt
    from PIL import Image

    from hoidata.annotations import write_hicodet_json
    from hoidata.evaluation import evaluate
    from hoidata.predictions import Predictions
    from hoidata.visualize import draw

    gt = make_gt({"a.png": [(0, [2, 2, 6, 6], [3, 3, 10, 10])]}, sizes=[(20, 20)], ls=tiny_ls)
    pred = Predictions.from_arrays(["a.png"], [0], [[1, 1, 5, 5]], [[2, 2, 9, 9]], [0], [0.5])
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    result = evaluate(gt, pred, tiny_ls)
    return {"labelspace": lambda p: tiny_ls.save(p), "per-class AP": result.save_per_class,
            "HICO-DET JSON": lambda p: write_hicodet_json(gt, tiny_ls, p),
            "picture": lambda p: draw(tmp_path / "a.png", pred, tiny_ls, p)}


@pytest.mark.parametrize("what", ["labelspace", "per-class AP", "HICO-DET JSON", "picture"])
def test_an_output_is_the_old_file_or_the_new_one_never_a_torn_one(tiny_ls, tmp_path, monkeypatch, what):
    """A writer stopped before its rename (a kill, a full disk) leaves the previous file as it
    was and no temporary beside it."""
    import hoicore.files

    write = _writers(tiny_ls, tmp_path)[what]
    out = tmp_path / "out" / "thing.png"
    out.parent.mkdir()
    out.write_bytes(b"the previous version")

    def stopped(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(hoicore.files.os, "replace", stopped)
    with pytest.raises(OSError):
        write(out)
    assert out.read_bytes() == b"the previous version" and os.listdir(out.parent) == ["thing.png"]
    monkeypatch.undo()
    write(out)
    assert out.read_bytes() != b"the previous version"


def test_temporaries_killed_writers_left_are_swept_by_the_next_writer(tmp_path):
    """An atomic write's temporary (its writer killed on this host), a lock takeover's, and a
    killed export-mat's work folder: the next write of the same output removes them."""
    import socket

    from hoicore.files import write_json_atomic
    from hoidata import matlab

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "results.json"
    left = tmp_path / f".results.json.{socket.gethostname()}.{dead.pid}.0123abcd.tmp"
    elsewhere = tmp_path / f".results.json.node-17.{dead.pid}.0123abcd.tmp"  # its writer may live
    live = tmp_path / f".results.json.{socket.gethostname()}.{os.getpid()}.0123abcd.tmp"
    for f in (left, elsewhere, live):
        f.write_text("{")
    write_json_atomic(out, {"a": 1})
    assert not left.exists() and elsewhere.exists() and live.exists()

    lock_path(tmp_path / "run").write_text(json.dumps({**_here(), "pid": dead.pid, "started": "earlier"}))
    taker = tmp_path / ".run.lock.5085cbabcc764bd38199f568cbe7948c"  # a taker killed before its rename
    taker.write_text("{}")
    with exclusive(tmp_path / "run"):
        assert not taker.exists()

    export = tmp_path / "matlab"
    (tmp_path / ".matlab.deadbeef.wip").mkdir()
    from hoidata.predictions import Predictions

    none = Predictions.from_arrays([], [], np.zeros((0, 4)), np.zeros((0, 4)), [], [])
    matlab.export(export, ["a.jpg"], none, LabelSpace.load("hico_det"))
    assert not (tmp_path / ".matlab.deadbeef.wip").exists() and (export / "export.json").is_file()
