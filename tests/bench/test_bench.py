"""make bench's parts run on tiny inputs and report what they say they report (no timing is asserted)."""

from __future__ import annotations

from bench.trainer import bench_trainer


def test_bench_trainer_runs_and_reports_its_ratios(tmp_path):
    lines = []
    r = bench_trainer(num_images=16, pairs_per_image=2, labelspace=None, num_classes=24, embed_dim=32, grid=(4, 4),
                      batch_size=8, online_batches=1, inference_images=4, device="cpu", workdir=tmp_path, workers=1,
                      echo=lines.append)
    text = "\n".join(lines)
    assert "cache speed-up" in text and "inference per test image" in text and "with its labels made" in lines[-1]
    assert r["speedup"] > 0 and r["student_ms_per_image"] > 0 and r["teacher_ms_per_image"] > 0
    assert r["image-labels_pairs_per_s"] > 0 and r["pair-labels_pairs_per_s"] > 0 and r["label_read_ratio"] > 0


def test_bench_memory_streams_two_cache_sizes_in_children_and_reports_their_peaks(tmp_path):
    from bench.memory import bench_memory

    lines = []
    rows = bench_memory(num_images=24, factor=2, embed_dim=16, grid=(4, 4), pairs_per_image=3, threads=1,
                        workdir=tmp_path, echo=lines.append)
    assert [(r["images"], r["heap"]) for r in rows] == [(24, "tuned"), (48, "tuned"), (48, "default")]
    assert all(r["peak_mb"] > 0 and r["seconds"] > 0 and r["cache_mb"] > 0 for r in rows)
    assert lines[-1].startswith("  peak RSS, 2x the images:")


def test_bench_teacher_compares_the_same_work_even_on_few_images():
    """Fewer images than the naive loop's sample used to crash; the baselines run first and
    must have encoded what the pipeline encodes (the bench asserts it)."""
    from bench.teacher import bench_teacher

    lines = []
    res = bench_teacher(num_images=3, run={"workers": 0, "jobs": 1}, echo=lines.append)
    assert res["images"] == 3 and res["crops"] > 0
    assert res["ratio_to_bare"] > 0 and res["ratio_to_naive"] > 0
    assert any("goal >= 0.85" in line for line in lines) and any("warm-up" in line for line in lines)


def test_bench_teacher_memory_builds_two_caches_in_children_and_reports_their_heaps(tmp_path):
    from bench.memory import bench_teacher_memory

    lines = []
    rows = bench_teacher_memory(num_images=6, factor=2, images_per_shard=4, workdir=tmp_path, echo=lines.append)
    assert [r["images"] for r in rows] == [6, 12]
    assert all(r["peak_mb"] > 0 and r["seconds"] > 0 for r in rows)
    if rows[0]["heap"] is not None:  # glibc 2.33+
        assert all(r["heap"]["in_use"] > 0 and r["heap"]["free"] >= 0 for r in rows)
        assert any(line.strip().startswith("grown with the images") for line in lines)
    assert any("peak RSS, 2x the images" in line for line in lines)
