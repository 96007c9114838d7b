"""Reading the lists of number rows in a large JSON document without a Python object
per number (the predictions format: file name -> ``[[ten numbers], ...]``).

:func:`scan` finds the strings of the raw bytes (the unescaped quote bytes) and, between
two strings, the one ``[...]`` there: first ``[`` to last ``]``, with no brace between (a
*span*; in a predictions file, one image's rows). The rest of the document, with each span
replaced by a placeholder number, is small and is parsed by :func:`json.loads` itself, so
keys (escapes, duplicates, their order) and everything outside the spans mean exactly what
they mean to :mod:`json`; each placeholder comes back as a :class:`Span`.

:class:`RowReader` parses spans with simdjson (pysimdjson), a few MB at a time: the rows of
several spans, or row-aligned pieces of one large span, joined into one JSON array; the
numbers come back as one float64 buffer (simdjson rounds them exactly as :func:`float`
does). A span is accepted only when simdjson parses it, every value is a number, and its
punctuation is exactly ``[[,,,,,,,,,],[,,,,,,,,,],...]`` (ten numbers a row); anything else
(``NaN``, which only Python's JSON has, ``true``, a short row, ...) is left to the caller,
to be read with :func:`json.loads`.
"""

from __future__ import annotations

import json
import mmap

import numpy as np

try:
    import simdjson
except ImportError:  # pragma: no cover - a platform without a pysimdjson wheel
    simdjson = None

ROW_LENGTH = 10
BATCH = 1 << 22        # bytes of rows parsed at once (tests make it small)
SCAN_CHUNK = 1 << 24   # bytes searched for quotes at once
WS = b" \t\n\r"
_NUMBER_OR_WS = b"0123456789.eE+-" + WS
_ROW_PUNCT = b"[" + b"," * (ROW_LENGTH - 1) + b"]"
_MARK = "e-" + "0" * 24  # the placeholder "17.0e-000...0" for span 17


class Span:
    """Where a span stood in the parsed skeleton; ``index`` into :attr:`Document.spans`."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"Span({self.index})"


class Document:
    """The parsed skeleton (:class:`Span` where the spans stood) and the spans' byte ranges
    ``(first '[', last ']')``, both inclusive."""

    def __init__(self, value, spans: list[tuple[int, int]]):
        self.value, self.spans = value, spans


def available() -> bool:
    return simdjson is not None


class _DropBehind:
    """For a file mapped with :mod:`mmap`: hand the pages already read back to the OS
    (they stay in the page cache; touching one again just maps it again), so a pass over
    a large file never holds all of it in this process's memory."""

    def __init__(self, data):
        self.data = data if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED") else None
        self.done = 0

    def upto(self, pos: int) -> None:
        end = pos - pos % mmap.PAGESIZE
        if self.data is not None and end - self.done >= BATCH:
            self.data.madvise(mmap.MADV_DONTNEED, self.done, end - self.done)
            self.done = end


def _count(data, byte: bytes, a: int, b: int, drop: _DropBehind | None = None) -> int:
    """How often ``byte`` occurs in ``data[a:b]`` (an :class:`mmap.mmap` has no ``count``)."""
    if not isinstance(data, mmap.mmap):
        return data.count(byte, a, b)
    n = 0
    for x in range(a, b, SCAN_CHUNK):
        n += data[x:min(x + SCAN_CHUNK, b)].count(byte)
        if drop is not None:
            drop.upto(min(x + SCAN_CHUNK, b))
    return n


def _quotes(data) -> np.ndarray | None:
    """Positions of the quote bytes that open or close a string; None if unpaired."""
    a = np.frombuffer(data, np.uint8)
    drop, found = _DropBehind(data), [np.zeros(0, np.int64)]
    for i in range(0, len(a), SCAN_CHUNK):
        found.append(np.flatnonzero(a[i:i + SCAN_CHUNK] == 0x22) + i)
        drop.upto(i + SCAN_CHUNK)
    q = np.concatenate(found)
    maybe = q[(q > 0) & (a[np.maximum(q - 1, 0)] == 0x5C)]  # after a backslash
    if len(maybe):
        escaped = []
        for p in maybe.tolist():
            k = p - 1
            while k >= 0 and data[k] == 0x5C:
                k -= 1
            if (p - 1 - k) % 2:
                escaped.append(p)
        q = np.setdiff1d(q, np.array(escaped, np.int64), assume_unique=True)
    return q if len(q) % 2 == 0 else None


def scan(data, object_pairs_hook=None) -> Document | None:
    """The skeleton of the JSON document ``data`` (bytes, bytearray or a read-only
    :class:`mmap.mmap`), or None where it is not valid JSON (the caller then lets
    :mod:`json` say why). ``object_pairs_hook``: as :func:`json.loads` takes it (what it
    raises propagates)."""
    q = _quotes(data)
    if q is None:
        return None
    starts = [0, *(q[1::2] + 1).tolist()]
    ends = [*q[0::2].tolist(), len(data)]
    spans = []
    for r0, r1 in zip(starts, ends):
        s = data.find(b"[", r0, r1)
        if s < 0:
            continue
        e = data.rfind(b"]", s, r1)
        if e < 0 or data.find(b"{", s, e) >= 0 or data.find(b"}", s, e) >= 0:
            continue
        spans.append((s, e))
    parts, prev = [], 0
    for k, (s, e) in enumerate(spans):  # spaces keep each placeholder a token of its own
        parts += [data[prev:s], f" {k}.0{_MARK} ".encode()]
        prev = e + 1
    parts.append(data[prev:])
    skeleton = b"".join(parts)
    if skeleton.count(_MARK.encode()) != len(spans):  # the marker also occurs in the file
        return None

    def number(text):
        return Span(int(text[:-len(_MARK) - 2])) if text.endswith(_MARK) else float(text)

    try:
        return Document(json.loads(skeleton.decode("utf-8"), parse_float=number,
                                   object_pairs_hook=object_pairs_hook), spans)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def span_rows(data, spans, order) -> list[int]:
    """The rows each span of ``order`` holds if it is a list of rows: the ``[`` inside it."""
    drop = _DropBehind(data)
    return [_count(data, b"[", spans[k][0] + 1, spans[k][1], drop) for k in order]


def load_span(data, span: tuple[int, int]):
    """The span's value by :func:`json.loads` (its errors propagate)."""
    return json.loads(bytes(data[span[0]:span[1] + 1]).decode("utf-8"))


def _blank(data, a: int, b: int) -> bool:
    return a >= b or not bytes(data[a:b]).translate(None, WS)


class RowReader:
    """Parse spans of rows into float64 [rows, 10] blocks, a few MB at a time."""

    def __init__(self, data, batch: int | None = None):
        self.data = data
        self.batch = batch or BATCH
        self.parser = simdjson.Parser()

    def _pieces(self, span):
        """(start, end) byte ranges, each '[' ... ']', that hold the span's rows in order,
        or None where the span is not laid out as rows; [] for an empty list."""
        d, (s, e) = self.data, span
        first, last = d.find(b"[", s + 1, e), d.rfind(b"]", s + 1, e)
        if first < 0:
            return [] if _blank(d, s + 1, e) else None
        if not (_blank(d, s + 1, first) and _blank(d, last + 1, e)):
            return None
        pieces, pos, end = [], first, last + 1
        while end - pos > self.batch:  # cut after a row, where ", [" follows
            close = d.find(b"]", pos + self.batch, end)
            comma = d.find(b",", close + 1, end) if 0 <= close < end - 1 else -1
            nxt = d.find(b"[", comma + 1, end) if comma >= 0 else -1
            if nxt < 0 or not (_blank(d, close + 1, comma) and _blank(d, comma + 1, nxt)):
                break  # not a row boundary: left to the parse of the piece to refuse
            pieces.append((pos, close + 1))
            pos = nxt
        pieces.append((pos, end))
        return pieces

    def _parse(self, pieces) -> tuple[np.ndarray, list[int]] | None:
        """The rows of the pieces joined into one array and each piece's number of rows;
        None unless all are rows of numbers."""
        texts = [self.data[a:b] for a, b in pieces]  # bytes (mmap, bytes) or bytearray slices
        text = b"[" + b",".join(texts) + b"]"
        try:
            doc = self.parser.parse(text)
            try:
                values = np.frombuffer(doc.as_buffer(of_type="d"), np.float64)
            finally:
                del doc
        except Exception:  # invalid JSON, a non-number, a number simdjson does not take, ...
            return None
        rows = len(values) // ROW_LENGTH
        if rows == 0 or len(values) != rows * ROW_LENGTH:
            return None
        if text.translate(None, _NUMBER_OR_WS) != b"[" + (_ROW_PUNCT + b",") * (rows - 1) + _ROW_PUNCT + b"]":
            return None
        return values.reshape(rows, ROW_LENGTH), [t.count(b"[") for t in texts]

    def read(self, spans, order, sink) -> set[int]:
        """Parse the spans ``order`` (indices into ``spans``). ``sink(block, parts)`` receives
        float64 [rows, 10] blocks: the first n rows of the block are rows first..first+n of
        span k, for ``(k, first, n)`` in ``parts``, then the next part's. Returns the spans
        that are not plain lists of rows of ten numbers (``sink`` may have had some of their
        rows)."""
        failed: set[int] = set()
        done = dict.fromkeys(order, 0)  # rows passed to sink so far
        group: list[tuple[int, int, int]] = []  # (span, start, end)
        size = 0

        drop = _DropBehind(self.data)

        def flush(items) -> bool:
            parsed = self._parse([(a, b) for _, a, b in items])
            drop.upto(max(b for _, _, b in items))
            if parsed is None:
                return False
            block, counts = parsed
            parts = []
            for (k, _, _), n in zip(items, counts):
                parts.append((k, done[k], n))
                done[k] += n
            sink(block, parts)
            return True

        def flush_group():
            nonlocal group, size
            items = [it for it in group if it[0] not in failed]
            group, size = [], 0
            if not items or flush(items):
                return
            by_span: dict[int, list] = {}
            for it in items:
                by_span.setdefault(it[0], []).append(it)
            for k, its in by_span.items():  # find which span failed
                if len(by_span) == 1 or not flush(its):
                    failed.add(k)

        for k in order:
            pieces = self._pieces(spans[k])
            if pieces is None:
                failed.add(k)
                continue
            for a, b in pieces:
                if k in failed:
                    break
                group.append((k, a, b))
                size += b - a
                if size >= self.batch:
                    flush_group()
        flush_group()
        return failed
