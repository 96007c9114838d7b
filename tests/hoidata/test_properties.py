"""Property tests (hypothesis) of the two places where an arithmetic slip would silently
corrupt results: the shard layout of the teacher cache (a chunk shared by two concurrent
writers loses data without an error in Zarr 3) and the evaluator (against its line-by-line
port of the official MATLAB loops)."""

import numpy as np
from conftest import TINY, make_gt, make_preds
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.layout import plan
from hoidata import ragged
from hoidata.evaluation import evaluate
from hoidata.labelspace import LabelSpace
from hoidata.reference_eval import reference_evaluate

# -- hoidata/ragged.py: the CSR idioms against their plain-Python meaning -----------------

@given(st.lists(st.tuples(st.integers(-50, 50), st.integers(0, 6)), max_size=40))
def test_ragged_helpers_mean_what_their_loops_mean(items):
    starts = np.array([s for s, _ in items], np.int64)
    counts = np.array([c for _, c in items], np.int64)
    assert ragged.offsets(counts).tolist() == [sum(counts[:i]) for i in range(len(counts) + 1)]
    assert ragged.owners(counts).tolist() == [i for i, c in enumerate(counts) for _ in range(c)]
    assert ragged.within(counts).tolist() == [j for c in counts for j in range(c)]
    assert ragged.ranges(starts, counts).tolist() == [s + j for s, c in items for j in range(c)]
    assert all(a.dtype == np.int64 for a in (ragged.offsets(counts), ragged.owners(counts),
                                             ragged.within(counts), ragged.ranges(starts, counts)))


# -- cache/layout.py: every concurrent writer owns whole chunks ----------------------------

layouts = st.tuples(
    st.lists(st.integers(0, 40), max_size=300),        # pairs per image
    st.integers(1, 64),                                # images per shard
    st.integers(1, 64),                                # image chunk asked for
    st.sampled_from([1, 2, 7, 16, 64, 256]),           # pair chunk
)


@settings(max_examples=300, deadline=None)
@given(layouts)
def test_shards_tile_images_and_rows_and_no_chunk_spans_two_shards(args):
    counts, per_shard, image_chunk, pair_chunk = args
    lay = plan(np.array(counts, np.int64), images_per_shard=per_shard, image_chunk=image_chunk,
               pair_chunk=pair_chunk)
    n = len(counts)
    # image ranges of the shards tile [0, n) in order, none larger than asked
    ranges = [lay.shard_images(k) for k in range(lay.num_shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(0 < hi - lo <= per_shard for lo, hi in ranges) or n == 0
    # image-indexed chunks never straddle a shard boundary
    assert per_shard % lay.image_chunk == 0 and lay.image_chunk <= image_chunk
    # pair-row ranges tile [0, R), each starts on a chunk boundary
    rows = [lay.shard_pair_rows(k) for k in range(lay.num_shards)]
    assert rows[0][0] == 0 and rows[-1][1] == lay.num_pair_rows
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert all(lo % pair_chunk == 0 for lo, _ in rows)
    assert all(0 <= hi - lo < sum(counts[i] for i in range(*ranges[k])) + pair_chunk
               for k, (lo, hi) in enumerate(rows))
    # each image's rows: as many as its pairs, inside its own shard's rows, in image order
    assert np.array_equal(lay.pair_end - lay.pair_begin, np.array(counts, np.int64).reshape(-1))
    for k, (lo_i, hi_i) in enumerate(ranges):
        lo_r, hi_r = rows[k]
        b, e = lay.pair_begin[lo_i:hi_i], lay.pair_end[lo_i:hi_i]
        if hi_i > lo_i:
            assert b[0] == lo_r and e[-1] <= hi_r
            assert np.array_equal(b[1:], e[:-1])       # contiguous: no gaps, no overlaps
    assert lay.num_pairs == sum(counts)


# -- hoidata/evaluation.py against hoidata/reference_eval.py ------------------------------

TINY_LS = LabelSpace.from_dict(TINY)
NUM_HOI = len(TINY_LS.hoi_verb)
coords = st.integers(1, 60)
sides = st.integers(1, 30)


@st.composite
def boxes(draw):
    x, y, w, h = draw(coords), draw(coords), draw(sides), draw(sides)
    return [x, y, x + w, y + h]


@st.composite
def worlds(draw):
    """Ground truth and predictions near it (jittered copies, some with another class, a
    few unrelated boxes), scores from a handful of values so that ties are common."""
    n = draw(st.integers(1, 10))
    images = {f"im{i:02d}": draw(st.lists(st.tuples(st.integers(0, NUM_HOI - 1), boxes(), boxes()), max_size=3))
              for i in range(n)}
    jitter = st.lists(st.integers(-3, 3), min_size=4, max_size=4)
    rows = {}
    for name in draw(st.permutations(list(images))):
        out = []
        for _ in range(draw(st.integers(0, 6))):
            if images[name] and draw(st.booleans()):
                hoi, bh, bo = draw(st.sampled_from(images[name]))
                bh = np.add(bh, draw(jitter)).tolist()
                bo = np.add(bo, draw(jitter)).tolist()
                if draw(st.integers(0, 3)) == 0:
                    hoi = draw(st.integers(0, NUM_HOI - 1))
            else:
                hoi, bh, bo = draw(st.integers(0, NUM_HOI - 1)), draw(boxes()), draw(boxes())
            out.append((bh, bo, hoi, draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))))
        rows[name] = out
    return images, rows


@settings(max_examples=150, deadline=None)
@given(worlds())
def test_evaluator_equals_the_reference_port(world):
    images, rows = world
    gt, p = make_gt(images), make_preds(rows)
    r = evaluate(gt, p, TINY_LS)
    for setting, ko in (("default", False), ("known_object", True)):
        np.testing.assert_array_equal(r.ap[setting], reference_evaluate(gt, p, TINY_LS, known_object=ko))
