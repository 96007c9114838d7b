"""The teacher cache: agreement with open_clip, resume after SIGKILL, refusal of another
teacher, unreadable images, concurrent shards (offline, a tiny registered CLIP)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from conftest import rebind
from PIL import Image
from tinyworld import MODEL, make_world_with_model
from tinyworld import build_cache as build

from cache import schema as S
from cache.store import CacheError, open_cache, wip_path
from hoicore.errors import InputError
from hoidata.labelspace import LabelSpace
from pipeline.teacher.clip import load_teacher
from pipeline.teacher.options import RunOptions, TeacherOptions
from pipeline.teacher.run import build_teacher_cache

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    paths = make_world_with_model(root, num_images=10)
    paths["config"] = root / "model" / f"{MODEL}.json"
    return paths


def arrays(path) -> dict:
    g = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(g[name][...]) for name in S.ARRAYS}


def chunk_bytes(path) -> dict:
    """Every chunk file of every array, by relative path (the store's bytes, attrs aside)."""
    path = Path(path)
    found = {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("c.*")) if p.is_file()}
    assert found, f"no chunk files under {path}"
    return found


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    return build(world, tmp_path_factory.mktemp("ref") / "cache.zarr")


def test_store_is_complete_and_valid(reference):
    c = open_cache(reference)
    assert c.complete and c.verify() == []
    assert (c.read("images/status") == S.STATUS_OK).all()
    assert c.layout.num_pairs > 0 and c.num_shards == 3
    # image 4 has no human: no pairs, global outputs all the same
    begin, end = c.read("pairs/begin"), c.read("pairs/end")
    assert begin[4] == end[4] and np.abs(c.read("global/score")[4]).sum() > 0
    # boxes are clipped to the image and zero-area boxes dropped
    box, sizes = c.read("detections/box"), c.read("images/size")
    img = np.repeat(np.arange(c.num_images), np.diff(c.read("detections/offsets")))
    assert (box[:, 2] <= sizes[img, 0]).all() and (box[:, 3] <= sizes[img, 1]).all()
    assert ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) > 0).all()
    t = c.attrs["teacher"]
    assert t["model"] == MODEL and len(t["weights_sha256"]) == 64 and t["crop_mode"] == "squash"


def test_ground_truth_changes_no_clip_array(world, reference, tmp_path):
    """A cache built with --annotations (a train split for the supervised references) holds
    the same CLIP outputs, pairs and detections, byte for byte, as one built without."""
    bare = build(world, tmp_path / "bare.zarr", annotations=None)
    with_gt, without = arrays(reference), arrays(bare)
    assert len(with_gt["gt/hoi"]) > 0 and len(without["gt/hoi"]) == 0
    for name in S.ARRAYS:
        if not name.startswith("gt/"):
            assert with_gt[name].tobytes() == without[name].tobytes(), name


def test_scores_equal_direct_open_clip(world, reference):
    """Cached scores = open_clip on the same crop tensors; our crops = a reference crop."""
    import open_clip

    c = open_cache(reference)
    t = load_teacher(MODEL, str(world["checkpoint"]))  # for its preprocessing constants only
    model = open_clip.create_model(MODEL, pretrained=str(world["checkpoint"])).eval()  # plain open_clip
    tok = open_clip.get_tokenizer(MODEL)
    with torch.no_grad():
        text = model.encode_text(tok(list(LabelSpace.load(world["labelspace"]).prompts)), normalize=True)
    np.testing.assert_allclose(c.read("text/embedding"), text.numpy(), atol=1e-5)
    mean, std = np.array(t.mean)[:, None, None], np.array(t.std)[:, None, None]
    names = c.read("images/file_name")
    begin, end, boxes = c.read("pairs/begin"), c.read("pairs/end"), c.read("pairs/box")
    size = t.image_size
    cosines = []
    for i in (0, 2, 5):
        im = Image.open(world["images"] / names[i]).convert("RGB")
        # the global input: the whole image squashed to the input size
        ref = torch.tensor(((np.asarray(im.resize((size, size), Image.BILINEAR), np.float32) / 255)
                            .transpose(2, 0, 1) - mean) / std, dtype=torch.float32)
        with torch.no_grad():
            emb = model.encode_image(ref[None], normalize=True)[0]
        cosines.append(float(emb @ torch.from_numpy(c.read("global/embedding")[i]).float()))
        for r in range(begin[i], end[i]):
            crop = im.resize((size, size), Image.BILINEAR, box=tuple(float(v) for v in boxes[r]))
            arr = (np.asarray(crop, np.float32) / 255).transpose(2, 0, 1)
            with torch.no_grad():
                emb = model.encode_image(torch.tensor((arr - mean) / std, dtype=torch.float32)[None],
                                           normalize=True)[0]
            cached = torch.from_numpy(c.read("union/embedding")[r]).float()
            cosines.append(float(emb @ cached / cached.norm()))
            # the cached raw cosine is the cached embedding against the cached text, to fp16 precision
            np.testing.assert_allclose(c.read("union/score")[r].astype(np.float32),
                                       (cached @ text.T).numpy(), atol=2e-3)
    assert min(cosines) >= 0.999, cosines


@pytest.mark.parametrize("helpers", [["--workers", "0"], ["--workers", "2", "--decode", "processes", "--writer",
                                                           "process"]], ids=["inline", "worker-processes"])
def test_resume_after_sigkill_is_byte_identical(world, reference, tmp_path, helpers):
    out = tmp_path / "cache.zarr"
    cmd = [sys.executable, "-m", "hoi", "-q", "teacher-cache", "--images", str(world["images"]),
           "--detections", str(world["detections"]), "--annotations", str(world["annotations"]),
           "--labelspace", str(world["labelspace"]), "--teacher-model", MODEL, "--model-config", str(world["config"]),
           "--pretrained", str(world["checkpoint"]), "--images-per-shard", "4", *helpers, "--no-progress",
           "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_done = wip_path(out) / "images" / "shard_done" / "c.0"
    deadline = time.time() + 120
    while not first_done.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed; the test needs a slower run"
    assert not open_cache(out, require_complete=False).complete
    # what zarr leaves of a chunk write a kill cut short (its temporary name), as the audit found
    (wip_path(out) / "union" / "score" / "c.1.0.3f2a9c.partial").write_bytes(b"half a chunk")
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert open_cache(out).complete
    assert chunk_bytes(out) == chunk_bytes(reference)
    assert open_cache(out).stray_files() == []  # swept: the finished store holds what its schema owns


def test_verify_lists_every_file_the_schema_does_not_own(reference, tmp_path):
    import shutil

    from hoi.cli import main

    copy = tmp_path / "cache.zarr"
    shutil.copytree(reference, copy)
    (copy / "gt" / "object" / "c.0.77aa.partial").write_bytes(b"x")
    (copy / "global" / "notes.txt").write_text("hand-made")
    out = CliRunner().invoke(main, ["cache", "verify", str(copy)])
    assert out.exit_code == 1
    assert "2 file(s) the schema does not own" in out.output
    assert "gt/object/c.0.77aa.partial" in out.output and "global/notes.txt" in out.output


def test_other_teacher_is_refused(world, reference, tmp_path):
    import shutil

    with pytest.raises(CacheError, match="teacher.crop_mode"):
        build(world, reference, teacher=TeacherOptions(model=MODEL, pretrained=str(world["checkpoint"]),
                                                       crop_mode="pad"))
    # the same weights found at another path are the same teacher (their sha256 decides)
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(world["checkpoint"], moved)
    assert build(world, reference, teacher=TeacherOptions(model=MODEL, pretrained=str(moved))) == reference


def test_corrupt_image_is_named_and_nothing_marked_done(world, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(world["images"], images)
    (images / "img_006.jpg").write_bytes(b"not a jpeg at all")
    bad = {**world, "images": images}
    out = tmp_path / "cache.zarr"
    with pytest.raises(RuntimeError, match="img_006.jpg"):
        build(bad, out)
    c = open_cache(out, require_complete=False)
    assert not out.exists() and not c.complete
    assert not c.shards_done()[1]  # the shard holding image 6
    # with --on-error skip the image is recorded, the rest is complete
    final = build(bad, out, on_error="skip")
    c = open_cache(final)
    assert c.read("images/status")[6] == S.STATUS_SKIPPED and c.attrs["skipped_images"] == ["img_006.jpg"]
    assert (np.delete(c.read("images/status"), 6) == S.STATUS_OK).all()


def test_two_shards_at_once_lose_nothing(world, reference, tmp_path):
    out = build(world, tmp_path / "cache.zarr", jobs=2)
    a, b = arrays(out), arrays(reference)
    for name in S.ARRAYS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_decoder_and_writer_processes_write_the_same_store(world, reference, tmp_path):
    """The GPU machine's defaults (decoding in worker processes kept across shards, a writer
    process), run on the CPU: the same bytes as decoding inline and writing from a thread."""
    out = build(world, tmp_path / "cache.zarr", workers=2, decode="processes", writer="process", batch_size=3)
    ref = build(world, tmp_path / "ref3.zarr", batch_size=3)
    assert chunk_bytes(out) == chunk_bytes(ref)
    a, b = arrays(out), arrays(reference)  # other batches: the same up to float rounding
    np.testing.assert_allclose(a["union/score"].astype(np.float32), b["union/score"].astype(np.float32), atol=2e-3)


def test_cache_inspect_and_verify_cli(reference):
    from hoi.cli import main

    out = CliRunner().invoke(main, ["cache", "inspect", str(reference)])
    assert out.exit_code == 0 and "union/score" in out.output and "complete: True" in out.output
    assert "HOI classes" in out.output and "last run: images 10, crops" in out.output
    assert max(len(line) for line in out.output.splitlines()) < 400  # no attribute dumped whole
    out = CliRunner().invoke(main, ["cache", "verify", str(reference)])
    assert out.exit_code == 0 and "complete and consistent" in out.output


def test_train_and_eval_on_a_real_teacher_cache(world, reference, tmp_path):
    """The pipeline's store is what the trainer reads: train, predict, evaluate end to end."""
    from trainer.engine import train
    from trainer.predict import run_eval

    metrics = train(reference, tmp_path / "run", epochs=2, progress=False, seed=0)
    assert np.isfinite(metrics["loss"])
    res, report = run_eval(reference, checkpoint=tmp_path / "run" / "checkpoint", results=tmp_path / "r.json")
    assert res.num_images == 10 and res.num_predictions > 0
    assert (tmp_path / "r.json").is_file() and report["results"]["default"].keys() >= {"full", "rare", "non_rare"}


def test_rescore_scores_new_prompts_without_the_image_encoder(world, reference, tmp_path):
    import json

    from pipeline.teacher.clip import text_embeddings

    prompts = [f"a photo of {p.lower()}" for p in LabelSpace.load(world["labelspace"]).prompts]
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    from hoi.cli import main

    out = CliRunner().invoke(main, ["rescore", str(reference), "--prompts", str(tmp_path / "p.json"),
                                    "-o", str(tmp_path / "new.zarr")])
    assert out.exit_code == 0, out.output
    old, new = open_cache(reference), open_cache(tmp_path / "new.zarr")
    assert new.attrs["teacher"]["prompts"] == prompts
    assert new.attrs["teacher"]["prompts_sha256"] != old.attrs["teacher"]["prompts_sha256"]
    text = text_embeddings(load_teacher(MODEL, str(world["checkpoint"])), prompts)
    np.testing.assert_allclose(new.read("text/embedding"), text, atol=1e-6)
    for level in ("global", "union"):
        emb = new.read(f"{level}/embedding").astype(np.float32)
        np.testing.assert_allclose(new.read(f"{level}/score").astype(np.float32), emb @ text.T, atol=2e-3)
        np.testing.assert_array_equal(new.read(f"{level}/embedding"), old.read(f"{level}/embedding"))
    assert not np.allclose(new.read("union/score"), old.read("union/score"))


def test_shards_on_a_dask_distributed_cluster(world, reference, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        out = build(world, tmp_path / "cache.zarr", scheduler=cluster.scheduler_address)
    a, b = arrays(out), arrays(reference)
    for name in S.ARRAYS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("address, words", [("notaurl", "is not a scheduler address"),
                                             ("tcp://127.0.0.1:9", "no dask scheduler answered within 1 s")])
def test_an_unreachable_scheduler_is_one_line_before_any_work(world, tmp_path, monkeypatch, address, words):
    import pipeline.teacher.run as run_module

    monkeypatch.setattr(run_module.reach_scheduler, "__defaults__", (1,))  # a second, not ten
    with pytest.raises(InputError, match=words):
        build(world, tmp_path / "cache.zarr", scheduler=address)
    assert not any(tmp_path.iterdir())  # no store, no lock: refused before the model loaded


def test_other_pair_rule_refused_and_overwrite_starts_afresh(world, tmp_path):
    from hoidata.pairs import PairRule

    out = build(world, tmp_path / "cache.zarr")
    with pytest.raises(CacheError, match="pair_rule.human_score"):
        build_teacher_cache(out, images=world["images"], detections=world["detections"],
                            annotations=world["annotations"], labelspace=LabelSpace.load(world["labelspace"]),
                            teacher=TeacherOptions(model=MODEL, pretrained=str(world["checkpoint"])),
                            pair_rule=PairRule(human_score=0.5), run=RunOptions(images_per_shard=4, workers=0,
                                                                                  progress=False))
    again = build_teacher_cache(out, images=world["images"], detections=world["detections"],
                                annotations=world["annotations"], labelspace=LabelSpace.load(world["labelspace"]),
                                teacher=TeacherOptions(model=MODEL, pretrained=str(world["checkpoint"])),
                                pair_rule=PairRule(human_score=0.5),
                                run=RunOptions(images_per_shard=4, workers=0, progress=False, overwrite=True))
    c = open_cache(again)
    assert c.attrs["pair_rule"]["human_score"] == 0.5 and c.verify() == []


def test_verify_reports_an_unfinished_store(world, reference, tmp_path):
    import shutil

    from hoi.cli import main

    wip = wip_path(tmp_path / "cache.zarr")
    shutil.copytree(reference, wip)
    g = zarr.open_group(str(wip), mode="r+")
    g["images/shard_done"][1] = False
    g.attrs["complete"] = False
    out = CliRunner().invoke(main, ["cache", "verify", str(tmp_path / "cache.zarr")])
    assert out.exit_code == 1 and "1 of 3 shards not done: [1]" in out.output
    with pytest.raises(CacheError, match="rerun the command to resume"):
        open_cache(tmp_path / "cache.zarr")


@pytest.mark.parametrize("damage, message", [
    ("lost chunk", "union/embedding: .* not unit length"),
    ("other scores", "union/score differs from embedding x text"),
    ("bad pair index", "pairs/human names a detection outside its image"),
])
def test_verify_finds_damaged_arrays(reference, tmp_path, damage, message):
    import shutil

    copy = tmp_path / "cache.zarr"
    shutil.copytree(reference, copy)
    g = zarr.open_group(str(copy), mode="r+")
    if damage == "lost chunk":
        chunk = sorted((copy / "union" / "embedding").glob("c.*"))[0]
        chunk.unlink()  # reads back as the fill value, zeros: still finite (and refused on open)
        with pytest.raises(CacheError, match="union/embedding lacks 1 chunk file"):
            open_cache(copy)
    elif damage == "other scores":
        g["union/score"][0] = np.asarray(g["union/score"][0]) + np.float16(0.5)
        rebind(copy)
    else:
        g["pairs/human"][0] = 10**6
        rebind(copy)
    problems = open_cache(copy, check_chunks=False).verify()
    assert any(re.search(message, p) for p in problems), problems


def test_helper_processes_on_gpu_only_and_never_from_a_daemon(monkeypatch):
    from types import SimpleNamespace

    from pipeline.teacher import shard

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert shard.helper_modes(RunOptions(), cuda) == ("processes", "process")
    assert shard.helper_modes(RunOptions(), cpu) == ("threads", "thread")
    assert shard.helper_modes(RunOptions(decode="processes", writer="process"), cpu) == ("processes", "process")
    monkeypatch.setattr(shard.multiprocessing, "current_process", lambda: SimpleNamespace(daemon=True))
    assert shard.helper_modes(RunOptions(), cuda) == ("threads", "thread")


def test_a_dead_writer_process_is_reported_and_nothing_marked_done(tmp_path):
    from bench.synthetic_cache import make_synthetic_cache
    from cache.store import TeacherCache
    from pipeline.teacher import writer as W
    from pipeline.teacher.resources import ShardResources

    path = make_synthetic_cache(tmp_path / "c", num_images=16, pairs_per_image=2, num_classes=4, embed_dim=8,
                                grid=(2, 2), images_per_shard=16, image_chunk=8, pair_chunk=16)
    zarr.open_group(str(path), mode="r+").attrs["complete"] = False  # shards write work-in-progress stores
    cache = TeacherCache(path, mode="r+")
    with ShardResources() as res:
        pool = res.writer_process()
        pool.submit(time.sleep, 0.5)
        pool.submit(os._exit, 1)  # the writer process dies while the shard's write waits in its queue
        writer = W.ShardWriter(cache, 0, "process", res.writer_process)
        writer.submit({"images/status": (0, 8, np.zeros(8, np.int8))})
        with pytest.raises(RuntimeError, match="writer process died while writing shard 0.*--writer thread"):
            writer.wait()
        writer = W.ShardWriter(cache, 0, "process", res.writer_process)  # the next shard starts a new one
        writer.submit({"images/status": (0, 8, np.full(8, S.STATUS_SKIPPED, np.int8))})
        writer.wait()
        assert res.writer_process() is not pool  # the dead one was replaced
    assert (cache.read("images/status")[:8] == S.STATUS_SKIPPED).all()


def test_a_large_image_is_decoded_reduced_and_its_crops_follow(world, reference, tmp_path, monkeypatch):
    """The canvas holds each image at most TEACHER_MAX_SIDE on its long side (here 48 for the
    world's 96 x 72 images), the boxes scaled with it: crops show the same regions, so the
    embeddings stay those of full-size decoding up to the lost resolution."""
    from pipeline import images as I
    from pipeline.teacher import shard

    names = sorted(p.name for p in Path(world["images"]).glob("*.jpg"))[:2]
    spec = I.BatchSpec(str(world["images"]), tuple(names), (0, 1), max_side=48)
    batch = I.load_batch(spec)
    files = [Image.open(Path(world["images"]) / n).size for n in names]
    assert batch.sizes.tolist() == [list(I.bounded_size(f, 48)) for f in files] and batch.sizes.max() == 48
    assert max(batch.pixels.shape[2:]) <= 48 + 2 * I.BORDER + 2
    assert np.allclose(batch.to_decoded, [[w / f[0], h / f[1]] * 2 for (w, h), f in zip(batch.sizes, files)])
    assert I.load_batch(I.BatchSpec(str(world["images"]), tuple(names), (0, 1))).to_decoded is None

    monkeypatch.setattr(shard, "TEACHER_MAX_SIDE", 48)
    small = open_cache(build(world, tmp_path / "small.zarr"))
    full = open_cache(reference)
    assert small.verify() == []
    for name in ("union/embedding", "global/embedding"):
        a, b = small.read(name).astype(np.float32), full.read(name).astype(np.float32)
        written = np.linalg.norm(b, axis=1) > 0  # padding rows hold zeros
        cos = (a * b).sum(1)[written]
        assert cos.mean() > 0.97 and cos.min() > 0.9, (name, cos.mean(), cos.min())


def test_the_split_is_recorded_when_given_or_said_by_hico_names(world, reference, tmp_path):
    from hoidata.annotations import split_of_names

    assert "split" not in open_cache(reference).attrs["dataset"]  # the world's names say none
    assert open_cache(build(world, tmp_path / "val.zarr", split="val")).attrs["dataset"]["split"] == "val"
    assert split_of_names(["HICO_test2015_00000001.jpg", "HICO_test2015_00000002.jpg"]) == "test"
    assert split_of_names(["HICO_train2015_00000001.jpg"]) == "train"
    assert split_of_names(["HICO_train2015_00000001.jpg", "HICO_test2015_00000001.jpg"]) is None
    assert split_of_names([]) is None


def test_a_forked_child_builds_a_cache_after_its_parent_did(world, reference, tmp_path):
    """The parent ran its shards on threads with decoders of two worker threads; a forked
    child (dask's process scheduler, a user's own fork) must start without any of them, not
    wait on dead threads: the run's resources are its own, closed when it ends."""
    build(world, tmp_path / "parent.zarr", workers=2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            out = build(world, tmp_path / "child.zarr", workers=2)
            os._exit(0 if (arrays(out)["union/score"] == arrays(reference)["union/score"]).all() else 3)
        except BaseException:
            os._exit(1)
    for _ in range(1200):  # a guard against a hang, not a timing: the build takes a few seconds
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its parent's decoder threads")
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_typed_attributes_are_what_the_store_holds_byte_for_byte(reference):
    """Built as records, stored as their to_attrs(): the stored JSON, key order included, is the
    record's (so every earlier store reads and compares as it did)."""
    import json

    c = open_cache(reference)
    for key, record in (("teacher", c.teacher), ("dataset", c.dataset), ("layout", c.layout)):
        assert json.dumps(record.to_attrs()) == json.dumps(c.attrs[key])
    assert c.teacher.weights_sha256 and c.teacher.crop_mode == "squash" and c.dataset.labelspace["name"]


def test_builds_sharing_resources_load_the_teacher_once_and_a_run_closes_only_its_own(world, reference, tmp_path,
                                                                                      monkeypatch):
    from pipeline.teacher import resources as R

    loads, real = [], R.load_teacher
    monkeypatch.setattr(R, "load_teacher", lambda *a, **k: loads.append(1) or real(*a, **k))
    closed = []
    real_close = R.ShardResources.close
    monkeypatch.setattr(R.ShardResources, "close", lambda self: closed.append(self) or real_close(self))
    with R.ShardResources() as shared:
        for name in ("a.zarr", "b.zarr"):
            assert (arrays(build(world, tmp_path / name, resources=shared))["union/score"]
                    == arrays(reference)["union/score"]).all()
        assert len(loads) == 1 and not closed  # the caller's: kept open across its builds
    assert closed == [shared]
    build(world, tmp_path / "c.zarr")  # a run of its own: its own resources, closed when it ends
    assert len(loads) == 2 and len(closed) == 2 and closed[1] is not shared
