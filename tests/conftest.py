"""Shared fixtures: a tiny label space and builders for hand-made ground truth."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hoidata.annotations import Annotations  # noqa: E402
from hoidata.labelspace import SCHEMA, LabelSpace  # noqa: E402
from hoidata.predictions import Predictions  # noqa: E402

TINY = {
    "schema": SCHEMA,
    "name": "tiny",
    "objects": ["ball", "cup", "person"],
    "verbs": ["hold", "kick", "no_interaction"],
    # class 0 hold ball, 1 kick ball, 2 no_interaction ball, 3 hold cup
    "hoi": [[0, 0], [1, 0], [2, 0], [0, 1]],
    "human": 2,
    "train_counts": [50, 3, 20, 1],
    "rare_threshold": 10,
    "prompts": ["a person holding a ball", "a person kicking a ball", "a person and a ball",
                "a person holding a cup"],
    "zero_shot_splits": {"toy": {"setting": "T", "unseen": [1]}},
    "coco80_to_object": [2] + [-1] * 31 + [0] + [-1] * 8 + [1] + [-1] * 38,
    "coco91_to_object": {"1": 2, "37": 0, "47": 1},
}


@pytest.fixture
def tiny_ls() -> LabelSpace:
    return LabelSpace.from_dict(TINY)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: two cores shared with other jobs, torch's
    default threads would oversubscribe them (and some tests compare batches bit for bit)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_preds(rows: dict, fmt="pixel1") -> Predictions:
    """rows: {file name: [(box_h, box_o, hoi, score), ...]} in image order."""
    names, image, bh, bo, hoi, score = [], [], [], [], [], []
    for i, (name, rs) in enumerate(rows.items()):
        names.append(name)
        for r in rs:
            image.append(i), bh.append(r[0]), bo.append(r[1]), hoi.append(r[2]), score.append(r[3])
    return Predictions.from_arrays(names, image, bh, bo, hoi, score, fmt)


def make_gt(images: dict, sizes=None, ls=None) -> Annotations:
    """images: {file name: [(hoi, box_h_pixel1, box_o_pixel1), ...]} in image order."""
    ls = ls or LabelSpace.from_dict(TINY)
    per = []
    for pairs in images.values():
        hoi = np.array([p[0] for p in pairs], dtype=np.int64)
        to_coord = lambda b: np.asarray(b, np.float64).reshape(-1, 4) - [1, 1, 0, 0]  # noqa: E731
        per.append({"boxes_h": to_coord([p[1] for p in pairs]), "boxes_o": to_coord([p[2] for p in pairs]),
                    "hoi": hoi, "verb": ls.hoi_verb[hoi] if len(hoi) else hoi,
                    "object": ls.hoi_object[hoi] if len(hoi) else hoi})
    sizes = sizes or [(100, 100)] * len(images)
    return Annotations.from_lists(list(images), sizes, per, ls.name)


def rebind(store) -> None:
    """Record a finished store's chunk placement anew after a test rewrote values through zarr,
    so the store models one written wrong from the start (what the value checks are for)
    rather than one whose chunks were moved (what the placement check is for)."""
    from cache import schema as S
    from cache.store import TeacherCache

    c = TeacherCache(store, mode="r+", check_chunks=False)
    c.root.attrs[S.CHUNK_CRC] = c.record_chunk_crc()
