"""Reading JSON and writing files atomically, the same way for every file format here."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path


def load_json(path, error: type[Exception], what: str):
    """The parsed content of a ``.json`` or ``.json.gz`` file; ``error`` (naming the file) when
    it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
        raise error(f"{path}: not a readable JSON file ({e})") from e


@contextmanager
def atomic_write(path):
    """Yield a temporary path beside ``path``; on success it is synced and renamed to ``path``,
    on failure removed. A crash never leaves a half-written file (or a damaged previous
    version) under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # the rename must not land before the data does
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file from its header (PIL reads pixels lazily)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size
