"""The JSON predictions reader (rows parsed from the raw bytes) against the json.load path
it replaces: the same Predictions on random files, the same refusals with the same words."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_preds

from hoicore import json_rows
from hoidata import predictions as P
from hoidata.predictions import PredictionsError, read_predictions, write_predictions

NAMES = ["HICO_test2015_00000001.jpg", 'quote"d.jpg', "back\\slash.jpg", "é-accent.jpg", "snow☃man.png",
         "[brackets].jpg", "{braces}.jpg", "tab\tname.jpg", "\\\"both\\\\.jpg", "e-000000000000000000000.jpg"]
GOOD = [1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]


def fast(path, box_format=None):
    """The raw-bytes reader alone; asserts it took the file (did not hand it to json.load)."""
    pred = P._read_json_fast(Path(path), box_format)
    assert pred is not None, "the fast reader handed the file to json.load"
    return pred


def reference(path, box_format=None):
    return P._read_json_reference(Path(path), box_format)


def assert_same(a, b):
    assert a.file_names == b.file_names and a.box_format == b.box_format
    assert a.classes == b.classes and a.labelspace == b.labelspace
    for k in ("image", "boxes_h", "boxes_o", "hoi", "score"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and x.shape == y.shape and x.flags.c_contiguous, k
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), k  # bit for bit: -0.0, NaN


def assert_refused_as_reference_does(f, message: str) -> None:
    """The fast reader refuses ``f`` with ``message``, word for word as the json-module reference does."""
    with pytest.raises(PredictionsError, match=message) as got:
        read_predictions(f)
    with pytest.raises(PredictionsError) as ref_error:
        reference(f)
    assert str(got.value) == str(ref_error.value)


def number(rng) -> str:
    kind = rng.integers(0, 9)
    if kind == 0:
        return str(int(rng.integers(-10**6, 10**6)))
    if kind == 1:
        return repr(float(np.float32(rng.random() * 640)))           # float32 detector output
    if kind == 2:
        return repr(float(rng.random()) * 10.0 ** int(rng.integers(-12, 3)))  # 1e-05 and the like
    if kind == 3:
        return ["-0.0", "0.0", "-0", "0", "1E5", "1e+05", "2.5E-3", "-1e-07", "18446744073709551615",
                "-9223372036854775808", "5e-324", "1e-400"][rng.integers(0, 12)]
    if kind == 4:  # any finite double
        v = float(rng.integers(0, 2**64, dtype=np.uint64).view(np.float64))
        return repr(v) if np.isfinite(v) else "-1.5"
    return repr(round(float(rng.random() * 640), int(rng.integers(0, 4))))


def row(rng) -> list[str]:
    r = [number(rng) for _ in range(10)]
    r[8] = str(int(rng.integers(0, 600)))
    return r


def write(path, images, *, fmt="pixel0", ws=lambda: "", extra=(), fmt_last=False):
    """A predictions file with the rows' text as given; ``ws()`` is put around punctuation."""
    def rows_text(rows):
        inner = f"{ws()},{ws()}".join(f"[{ws()}" + f"{ws()},{ws()}".join(r) + f"{ws()}]" for r in rows)
        return f"[{ws()}{inner}{ws()}]"
    body = f"{ws()},{ws()}".join(f"{json.dumps(n)}{ws()}:{ws()}{rows_text(r)}" for n, r in images)
    parts = [f'"predictions"{ws()}:{ws()}{{{ws()}{body}{ws()}}}', f'"box_format"{ws()}:{ws()}"{fmt}"']
    if fmt_last is False:
        parts.reverse()
    parts[1:1] = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in extra]
    text = f"{ws()}{{{ws()}" + f"{ws()},{ws()}".join(parts) + f"{ws()}}}{ws()}"
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def random_images(rng, n_images=12):
    names = list(NAMES) + [f"img{i:05d}.jpg" for i in range(n_images)]
    rng.shuffle(names)
    return [(n, [row(rng) for _ in range(int(rng.integers(0, 40)) * int(rng.random() < 0.85))])
            for n in names[:n_images]]


@pytest.mark.parametrize("seed", range(6))
def test_same_predictions_as_json_load_on_random_files(tmp_path, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    spaces = ["", " ", "\n", "\t", "\r\n", "  \n "]
    ws = (lambda: "") if seed % 3 == 0 else (lambda: spaces[rng.integers(0, len(spaces))])
    extra = [("model", {"name": "x", "sizes": [[1, 2], [3]]}), ("note", "a [b] {c}")] if seed % 2 else []
    f = write(tmp_path / ("p.json.gz" if seed == 5 else "p.json"), random_images(rng), ws=ws, extra=extra,
              fmt_last=seed % 2 == 1)
    ref = reference(f)
    assert len(ref) > 0
    slow = []  # spans simdjson did not take: none here (test_numbers_simdjson_leaves_to_json has those)
    read = json_rows.RowReader.read
    monkeypatch.setattr(json_rows.RowReader, "read", lambda *a: slow.extend(read(*a)) or set(slow))
    for batch in (json_rows.BATCH, 300, 64):  # 64 bytes: every span cut into pieces of a row or two
        monkeypatch.setattr(json_rows, "BATCH", batch)
        assert_same(fast(f), ref)
    assert_same(read_predictions(f), ref)
    assert slow == []


def test_written_files_and_edge_layouts(tmp_path):
    from bench.predictions import synthetic_hico_predictions

    _, pred = synthetic_hico_predictions(3000, seed=1)
    for name in ("p.json", "p.json.gz"):
        P.write_predictions(pred, tmp_path / name)
        assert_same(fast(tmp_path / name), reference(tmp_path / name))
    empty = tmp_path / "empty.json"
    for text in ('{"box_format": "coord", "predictions": {}}', '{"predictions":{"a":[],"b":[ ]},"box_format":"coord"}',
                 '{"box_format":"coord","predictions":{"a":[\n\n]}, "x": [[1]], "y": [[[2]]], "z": []}'):
        empty.write_text(text)
        got = fast(empty)
        assert_same(got, reference(empty))
        assert got.boxes_h.shape == (0, 4) and got.hoi.dtype == np.int64


@pytest.mark.parametrize("name", ["p.json", "p.json.gz", "p.npz"])
def test_the_label_space_record_travels_with_the_file_and_decides_how_it_is_read(tmp_path, name):
    from bench.predictions import synthetic_hico_predictions
    from hoidata.labelspace import LabelSpace

    _, pred = synthetic_hico_predictions(200, seed=2)
    hico = LabelSpace.load("hico_det")
    pred.labelspace = hico.to_dict()
    P.write_predictions(pred, tmp_path / name)
    got = read_predictions(tmp_path / name)
    assert got.labelspace == hico.to_dict()
    if name != "p.npz":
        assert_same(fast(tmp_path / name), reference(tmp_path / name))
    assert P.labelspace_of(got).fingerprint == hico.fingerprint  # none given: the file's own
    assert P.labelspace_of(got, "hico_det").fingerprint == hico.fingerprint
    other = LabelSpace.from_dict({**hico.to_dict(), "name": "hico_det_renamed", "rare_threshold": 11})
    with pytest.raises(PredictionsError, match=r"made over label space 'hico_det' .*not over 'hico_det_renamed'"
                                               r".*drop --labelspace"):
        P.labelspace_of(got, other, "p")
    got.classes = {"hoi": [["ride", "horse"]]}  # a class record is matched by name instead: no refusal
    assert P.labelspace_of(got, other) is other
    got.labelspace = None  # a file from elsewhere, without the record: HICO-DET's unless told
    assert P.labelspace_of(got).name == "hico_det" and P.labelspace_of(got, other) is other


def test_an_image_listed_twice_is_refused_by_name_by_both_readers(tmp_path):
    """json would keep the last list: 2 rows of image a read back as 1, without a word."""
    a1, a2, b = [GOOD[:8] + [1, 0.1]], [GOOD[:8] + [2, 0.2]] * 2, [GOOD[:8] + [3, 0.3]]
    f = tmp_path / "dup.json"
    f.write_text('{"box_format": "coord", "predictions": {"a.jpg": %s, "b.jpg": %s, "a.jpg": %s}}'
                 % (json.dumps(a1), json.dumps(b), json.dumps(a2)))
    message = r"dup\.json: 'a\.jpg' is a key twice in one object .*merge them into one"
    for read in (P._read_json_reference, lambda p, fmt: read_predictions(p, fmt)):
        with pytest.raises(PredictionsError, match=message):
            read(f, None)
    assert P._read_json_fast(f, None) is None  # handed to the reference read, which names it
    # (an .npz keeps every row however often a name repeats: rows name their image by index)


def test_nan_and_infinity_are_read_as_python_reads_them(tmp_path):
    f = tmp_path / "nan.json"
    f.write_text('{"box_format": "coord", "predictions": {"a": [[1, 1, 10, 10, 21, 21, 40, 40, 0, NaN]], '
                 '"b": [[1, 1, Infinity, 10, 21, 21, 40, -Infinity, 0, 0.5], '
                 '[1, 1, 10, 10, 21, 21, 40, 40, 0, 1e400]]}}')
    got = fast(f)
    assert_same(got, reference(f))
    assert np.isnan(got.score[0]) and got.boxes_h[1, 2] == np.inf and got.score[2] == np.inf


def test_numbers_simdjson_leaves_to_json(tmp_path, monkeypatch):
    """Integers beyond 64 bits and overflowing exponents: the image is read by json."""
    monkeypatch.setattr(json_rows, "BATCH", 64)
    rows = {"a": [GOOD] * 5 + [[123456789012345678901, -9223372036854775809, 1, 1, 2, 2, 3, 3, 0, 0.5]] + [GOOD] * 5,
            "b": [GOOD] * 3, "c": [[1e308, 18446744073709551616, 1, 1, 2, 2, 3, 3, 0, 0.5]]}
    f = tmp_path / "big.json"
    f.write_text(json.dumps({"box_format": "coord", "predictions": rows}).replace("1e+308", "1e999"))
    got = fast(f)
    assert_same(got, reference(f))
    assert got.boxes_h[5, 0] == 123456789012345678901 and got.boxes_h[-1, 0] == np.inf


def test_box_format_override_and_a_name_holding_the_placeholder_text(tmp_path):
    f = write(tmp_path / "p.json", [("a", [row(np.random.default_rng(0))])], fmt="pixel1")
    assert fast(f, "coord").box_format == "coord" and fast(f).box_format == "pixel1"
    g = tmp_path / "mark.json"
    g.write_text('{"box_format": "coord", "predictions": {"1.0e-000000000000000000000000": [%s]}}' % json.dumps(GOOD))
    assert P._read_json_fast(g, None) is None  # cannot tell it from a placeholder: json.load reads it
    assert read_predictions(g).file_names == ["1.0e-000000000000000000000000"]


ROWS_OF_A = {  # rows of image "a" -> the words the error must hold
    "[%s, %s]" % (GOOD, GOOD[:9]): "image a, row 1: expected 10 numbers",
    "[%s, %s, %s]" % (GOOD, GOOD, GOOD + [7]): "image a, row 2: expected 10 numbers .*, got 11",
    "[%s, []]" % GOOD: "image a, row 1: expected 10 numbers .*, got 0",
    "[%s, 5]" % GOOD: "image a, row 1: expected 10 numbers .*, got int",
    "[[true, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]": r"image a, row 0: non-numeric value in \[True",
    "[%s, [null, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]" % GOOD: r"image a, row 1: non-numeric value in \[None",
    '[[1, 1, 10, 10, 21, 21, 40, 40, 0, "0.5"]]': r"image a, row 0: non-numeric value in .*'0.5'",
    '[[1, 1, 10, 10, 21, 21, 40, 40, 0, {"s": 1}]]': "image a, row 0: non-numeric value",
    "[[[1], 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]": "image a, row 0: non-numeric value",
    "[%s, [1, 1, 10, 10, 21, 21, 40, 40, 1.5, 0.5]]" % GOOD: "image a, row 1: HOI class 1.5 is not an integer",
    "[%s, [1, 1, 10, 10, 21, 21, 40, 40, NaN, 0.5]]" % GOOD: "image a, row 1: HOI class nan is not an integer",
    '{"x": 1}': "image a: expected a list of rows, got dict",
    "7": "image a: expected a list of rows, got int",
}


@pytest.mark.parametrize("rows, message", ROWS_OF_A.items())
@pytest.mark.parametrize("batch", [None, 64])
def test_bad_rows_name_image_and_row_as_json_load_does(tmp_path, monkeypatch, rows, message, batch):
    if batch:
        monkeypatch.setattr(json_rows, "BATCH", batch)
    many = json.dumps([GOOD] * 20)  # images before and after: several batches and pieces
    f = tmp_path / "bad.json"
    f.write_text('{"box_format": "coord", "predictions": {"z": %s, "a": %s, "y": %s}}' % (many, rows, many))
    assert_refused_as_reference_does(f, message)


def test_the_first_bad_image_in_file_order_is_named(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"box_format": "coord", "predictions": {"a": [%s, [1]], "b": [%s, [1, 2]], "c": 5}}' % (GOOD, GOOD))
    with pytest.raises(PredictionsError, match="image c: expected a list of rows, got int"):
        read_predictions(f)  # as json.load: a value that is not a list first, then the rows
    f.write_text('{"box_format": "coord", "predictions": {"a": [%s, %s], "b": [%s, [1, 2]], "c": [[1]]}}'
                 % (GOOD, GOOD, GOOD))
    with pytest.raises(PredictionsError, match="image b, row 1: expected 10 numbers"):
        read_predictions(f)


@pytest.mark.parametrize("text", [
    '{"box_format": "coord", "predictions": {"a": [[1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5,]]}}',  # trailing comma
    '{"box_format": "coord", "predictions": {"a": [[01, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]}}',  # leading zero
    '{"box_format": "coord", "predictions": {"a": [[.5, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]}}',
    '{"box_format": "coord", "predictions": {"a": [[1 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]}}',
    '{"box_format": "coord", "predictions": {"a": [[1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]] "b": []}}',
    '{"box_format": "coord", "predictions": {"a": [[1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]}, "x": [[1,]]}',
    '{"box_format": "coord", "predictions": {"a": [[1,, 2]], "a": [[1, 2]]}}',  # in the value json drops
    '{"box_format": "coord", "predictions": {"a": [[1, 2]]}',
    '{"box_format": "coord", "predictions": {"a": [[1, 2]]}} x',
    '\ufeff{"box_format": "coord", "predictions": {}}',
    '{"box_format": "coord", "predictions": {"a\\x": []}}',
    "",
])
def test_files_that_are_not_json_get_json_loads_error(tmp_path, text):
    f = tmp_path / "bad.json"
    f.write_text(text, encoding="utf-8")
    assert_refused_as_reference_does(f, "not a readable JSON file")


@pytest.mark.parametrize("text, message", [
    ('[[1, 2]]', "expected an object with a 'predictions' mapping"),
    ('{"box_format": "coord", "predictions": [[1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]}', "expected an object"),
    ('{"predictions": {"a": [[1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5]]}}', "no 'box_format' in the file"),
    ('{"box_format": [[1]], "predictions": {}}', r"unknown box format \[\[1\]\]"),
    ('{"box_format": "pixel2", "predictions": {}}', "unknown box format 'pixel2'"),
])
def test_files_of_another_shape_get_the_same_message(tmp_path, text, message):
    f = tmp_path / "other.json"
    f.write_text(text)
    assert_refused_as_reference_does(f, message)


def test_unreadable_files(tmp_path):
    with pytest.raises(PredictionsError, match="no such predictions file"):
        read_predictions(tmp_path / "missing.json")
    f = tmp_path / "p.json.gz"
    f.write_bytes(b"not gzip")
    with pytest.raises(PredictionsError, match="not a readable JSON file"):
        read_predictions(f)


def test_predictions_with_a_nan_are_never_written(tmp_path):
    pred = make_preds({"a.jpg": [([1, 1, 10, 10], [5, 5, 20, 20], 1, float("nan"))]})
    with pytest.raises(Exception, match="image a.jpg, row 0: score is nan"):
        write_predictions(pred, tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("fast", [True, False])
def test_a_gzip_bomb_is_refused_before_it_fills_memory(tmp_path, monkeypatch, fast):
    monkeypatch.setattr(P, "MAX_GZIP_BYTES", 1 << 20)
    path = tmp_path / "bomb.json.gz"
    with gzip.open(path, "wt") as f:  # valid JSON: 8 MiB of blanks, a few KiB compressed
        f.write('{"box_format": "coord", "predictions": {}' + " " * (8 << 20) + "}")
    if not fast:
        monkeypatch.setattr(P, "_read_json_fast", lambda *a: None)
    with pytest.raises(PredictionsError, match="bomb.json.gz: expands to more than 1 MiB .*gzip bomb"):
        read_predictions(path)


def test_a_large_truncated_file_is_refused_without_json_load(tmp_path, monkeypatch):
    """json.load of a truncated file held about ten times the file in memory only to name the error."""
    f = tmp_path / "cut.json"
    f.write_text('{"box_format": "coord", "predictions": {"a": [' + "[1, 1, 10, 10, 21, 21, 40, 40, 0, 0.5], " * 200)
    monkeypatch.setattr(P, "REFERENCE_READ_MAX", 1000)
    monkeypatch.setattr(P, "_read_json_reference", lambda *a: pytest.fail("json.load was tried"))
    with pytest.raises(PredictionsError, match=r"cut\.json: 0 MiB that the streaming reader does not take .*truncated"):
        read_predictions(f)
    monkeypatch.undo()
    with pytest.raises(PredictionsError, match="not a readable JSON file"):  # a small one: json.load names it
        read_predictions(f)
