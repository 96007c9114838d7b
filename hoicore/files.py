"""Reading JSON and writing files atomically, the same way for every file format here."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import HoiError


def load_json(path, error: type[Exception], what: str, object_pairs_hook=None):
    """The parsed content of a ``.json`` or ``.json.gz`` file; ``error`` (naming the file) when
    it is missing or not JSON. ``object_pairs_hook``: as :func:`json.load` takes it."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=object_pairs_hook)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
        raise error(f"{path}: not a readable JSON file ({e})") from e
    except RecursionError:
        raise error(f"{path}: nested too deeply to be a {what} file") from None


def json_form(value):
    """``value`` as it reads back from JSON (tuples become lists, keys strings): compare a
    setting with its stored copy in this form."""
    return json.loads(json.dumps(value))


def _fsync(path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Make a folder's entries (files created or renamed into it) durable."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def fsync_file(path) -> None:
    """Make a written file's bytes durable (before a rename or a flag that says it is there)."""
    _fsync(path, os.O_RDONLY)


_HOST = socket.gethostname()


def _sweep_dead_temporaries(path: Path) -> None:
    """Delete the temporaries of ``path`` that writers killed on this host left (their pid is
    gone). Those of another host are left alone: whether their writer lives cannot be told here."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(_HOST)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and not pid_alive(int(m.group(1))):
            (path.parent / name).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@contextmanager
def atomic_write(path):
    """Yield a temporary path beside ``path``; on success it is synced and renamed to ``path``,
    on failure removed. A crash never leaves a half-written file (or a damaged previous
    version) under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_temporaries(path)
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        fsync_file(tmp)  # the rename must not land before the data does
        os.replace(tmp, path)
        fsync_dir(path.parent)  # and the rename itself must survive a power loss
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> None:
    """``Path(path).write_text(text)``, through :func:`atomic_write`: the file is the old one
    or the new one, whole, whatever stops the process."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path, value, indent: int | None = 1) -> None:
    """``value`` as JSON (a final newline when indented), written with :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(value, indent=indent) + ("\n" if indent is not None else ""))


class UnsafeNameError(HoiError, ValueError):
    """A file name from an input file that would reach outside the folder it must stay in."""


def inside(root, name: str, *, source: str = "", real_root: str | None = None, folder: str = "images folder") -> Path:
    """``root / name``; UnsafeNameError naming the entry when ``name`` is absolute, climbs out of
    ``root`` with ``..``, or resolves (symlinks followed) outside ``root``.

    ``source`` names where the entry came from, for the message; ``real_root``: ``root``
    already resolved (callers checking many names resolve it once); ``folder``: what
    ``root`` is, for the message."""
    real_root = real_root or os.path.realpath(root)
    where = f"{source}: " if source else ""
    if not name or os.path.isabs(name):
        raise UnsafeNameError(f"{where}image name {name!r} is not a path relative to the {folder} {root}")
    path = os.path.join(real_root, name)
    if "/" in name or "\\" in name or ".." in name or os.path.islink(path):  # the common flat name: one lstat
        real = os.path.realpath(path)
        if not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise UnsafeNameError(f"{where}image name {name!r} leads outside the {folder} {root} (to {real}); "
                                  "names must stay inside it (no absolute paths, '..' or symlinks out of it)")
    return Path(root) / name


def check_inside(root, names, *, source: str = "") -> None:
    """:func:`inside` for every name (the root resolved once)."""
    real_root = os.path.realpath(root)
    for name in names:
        inside(root, name, source=source, real_root=real_root)


class MissingDependency(HoiError, ImportError):
    """An optional package that a feature needs is not installed; the message names the extra."""


def scipy_io():
    """``scipy.io``, an optional dependency that only MATLAB files need; MissingDependency naming the extra."""
    try:
        import scipy.io
    except ImportError as e:
        raise MissingDependency("MATLAB files need scipy: pip install scipy "
                                "(or pip install 'hoi-distill[matlab]')") from e
    return scipy.io


# The image formats the project reads (PIL's names; JPEG includes cameras' MPO files).
# Image.open is told these and no other: an EPS or PDF renamed .jpg would otherwise reach
# Ghostscript where it is installed.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")


def image_size(path) -> tuple[int, int]:
    """(width, height) of an image file from its header (PIL reads pixels lazily)."""
    from PIL import Image

    with Image.open(path, formats=IMAGE_FORMATS) as im:
        return im.size
