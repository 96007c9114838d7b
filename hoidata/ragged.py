"""Ragged arrays as CSR: rows of many items (detections, pairs, ground truth) stored flat,
item i owning rows ``offsets[i]:offsets[i + 1]``.

The four idioms every reader and writer of such arrays needs, written once. All return
int64 numpy arrays; counts are non-negative integers.
"""

from __future__ import annotations

import numpy as np


def offsets(counts) -> np.ndarray:
    """int64 [N + 1]: 0, then the running totals of ``counts`` [N]."""
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def owners(counts) -> np.ndarray:
    """int64 [sum(counts)]: for every row, the item that owns it (0 repeated counts[0] times, ...)."""
    counts = np.asarray(counts, np.int64)
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def within(counts) -> np.ndarray:
    """int64 [sum(counts)]: for every row, its position inside its item (0, 1, .., counts[i] - 1)."""
    counts = np.asarray(counts, np.int64)
    ends = np.cumsum(counts)
    return np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) - np.repeat(ends - counts, counts)


def ranges(starts, counts) -> np.ndarray:
    """int64 [sum(counts)]: the concatenation of ``arange(s, s + c)`` for each (s, c), vectorised."""
    counts = np.asarray(counts, np.int64)
    return within(counts) + np.repeat(np.asarray(starts, np.int64), counts)
