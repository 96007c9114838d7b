"""Create, open, validate, write and finalise a teacher cache (Zarr v3).

Life of a store at ``PATH``:

1. :func:`create` makes the store under a temporary name (``PATH.wip.tmp-...``) with every
   array of its levels (:mod:`cache.schema`) and the root attributes (``prepared`` and
   ``complete`` false), then renames it to ``PATH.wip``: a ``.wip`` is never half made, and
   a temporary folder left by a killed run is removed by the next one;
2. the coordinator writes the prepare-time arrays and sets ``prepared``;
3. each shard writes its own chunks, then sets its ``images/shard_done`` flag (its own
   chunk); a rerun skips shards whose flag is set;
4. :func:`finalize` checks every shard is done, sets ``complete`` and renames
   ``PATH.wip`` to ``PATH``.

So a store under its final name is always complete, and a ``.wip`` store is never read
as one. Opening a store validates it against the schema and lists its chunk files once:
every chunk the layout says was written (all prepare-time chunks once ``prepared`` is
set, the chunks of every done shard) must exist. Reading a damaged chunk (its crc32c
differs, or it does not decode) raises :class:`CacheError` naming the array and chunk.

A checksum covers a chunk's content, not where it sits: a chunk copied, restored or synced
under another key would read as good. So :func:`finalize` records each chunk's crc32c (the
4-byte trailer the codec writes, read back from the file) under its array and key in the
root attribute ``chunk_crc``, and every read of a complete store compares the trailer of
the bytes it got with that record (:class:`_BoundStore`): one comparison per chunk. (Two
chunks with the same trailer hold the same bytes, to 1 in 2**32, so swapping them is harmless.)

Durability: a shard's chunk files are fsynced before its done flag is written, and the flag
before the shard counts as done; finalize syncs the root metadata before the rename that
publishes the store, then the parent folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore, WrapperStore

from hoicore import __version__
from hoicore.files import fsync_dir, fsync_file, json_form

from . import schema as S
from .errors import CacheError, CacheMismatch, ChunkMisplaced  # noqa: F401 (readers import them from here too)

log = logging.getLogger(__name__)

# Chunks are written even when they equal the fill value: a missing chunk is then a lost one.
_ARRAY_CONFIG = {"write_empty_chunks": True}
_KEY_ENCODING = {"name": "default", "separator": "."}  # chunk files side by side: one listing per array
_REBUILD = "restore it from a copy or rebuild it (hoi teacher-cache ... --overwrite)"
_ROWS = {"image": "images", "pair": "pair rows", "det": "detections", "gt": "ground-truth pairs",
         "image1": "offsets", "class": "classes", "shard": "shards"}


class _BoundStore(WrapperStore):
    """A store that checks every chunk it reads against ``crc``: {array name: the crc32c
    trailers of its chunks, 4 bytes per chunk index, as :func:`finalize` recorded them}.
    Empty (nothing checked) while a store is a work in progress."""

    def __init__(self, store, cache: "TeacherCache"):
        super().__init__(store)
        self.crc: dict[str, bytes] = {}
        self._cache = cache

    async def get(self, key, prototype, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        if buf is None or byte_range is not None or not self.crc:
            return buf
        name, sep, index = key.rpartition("/c.")
        table = self.crc.get(name) if sep else None
        if table is not None:
            i = int(index.split(".", 1)[0])
            if buf.as_numpy_array()[-4:].tobytes() != table[4 * i:4 * i + 4]:
                raise ChunkMisplaced(
                    f"{self._cache.path}: chunk {key} of {name} ({self._cache._rows_of(name, key)}) holds bytes "
                    "that were not written under that name (a chunk moved, restored or synced to the wrong key); "
                    + _REBUILD)
        return buf


def wip_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".wip")


def _tmp_prefix(path) -> str:
    return wip_path(path).name + ".tmp-"


def _leftovers(path) -> list[Path]:
    """Temporary folders of creations that never finished (a run killed while creating)."""
    parent, prefix = Path(path).parent, _tmp_prefix(path)
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]


def _discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _stored_format(p: Path) -> str | None:
    try:
        return json.loads((p / "zarr.json").read_text()).get("attributes", {}).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def _is_teacher_cache(p: Path, work: bool) -> bool:
    """Whether ``p`` is a teacher cache of any version: its format attribute, or, for a work
    folder, a hoi-cache/1 ``.wip`` killed before its attributes were written (that version
    created its arrays first)."""
    if _stored_format(p) in (S.FORMAT, *S.OLD_FORMATS):
        return True
    return work and (p / "images" / "shard_done" / "zarr.json").is_file()


def remove(path) -> None:
    """Delete the store at ``path`` (its ``.wip`` and creation leftovers too), refusing anything
    that is not one: an --overwrite pointed at the wrong folder must not delete it."""
    for p, work in ((Path(path), False), (wip_path(path), True)):
        if not p.exists():
            continue
        if not _is_teacher_cache(p, work):
            raise CacheError(f"{p} exists and is not a teacher cache; refusing to delete it, choose another output")
        shutil.rmtree(p)
    for p in _leftovers(path):
        _discard(p)


def _normal_levels(levels) -> tuple[str, ...]:
    unknown = sorted(set(levels) - set(S.LEVELS))
    if unknown or S.GLOBAL not in levels:
        raise ValueError(f"levels {list(levels)}: a store holds the global level and optionally "
                         f"{', '.join(S.LEVELS[1:])}")
    return tuple(lv for lv in S.LEVELS if lv in levels)


def _create_array(root: zarr.Group, name: str, layout: dict) -> None:
    spec = S.ARRAYS[name]
    dtype = str if spec.dtype == "str" else spec.dtype
    fill = "" if spec.dtype == "str" else (False if spec.dtype == "bool" else 0)
    if name == "pairs/image":
        fill = -1  # padding rows
    # CLIP features in float16 barely compress, and compressing them costs the writer
    # thread CPU (and GIL) that the thread feeding the GPU needs: they get the checksum only.
    compressors = [Crc32cCodec()] if spec.dtype == "float16" else [ZstdCodec(level=0), Crc32cCodec()]
    root.create_array(name, shape=S.shape_of(name, layout), chunks=S.chunks_of(name, layout), dtype=dtype,
                      fill_value=fill, compressors=compressors, chunk_key_encoding=_KEY_ENCODING,
                      config=_ARRAY_CONFIG, attributes={"description": spec.description, "writer": spec.writer,
                                                        "level": spec.level})


def create(path, *, teacher: dict, pair_rule: dict, dataset: dict, layout: S.LayoutAttrs, levels=S.LEVELS,
           overwrite: bool = False) -> "TeacherCache":
    """Create an empty work-in-progress store at ``PATH.wip`` holding ``levels`` (see the
    module docstring): built under a temporary name, renamed once whole."""
    levels = _normal_levels(levels)
    wip = wip_path(path)
    for p in _leftovers(path):  # one run per output (the caller holds its lock): these are dead
        _discard(p)
    if wip.exists():
        if not overwrite:
            raise CacheError(f"{wip} exists; resume it or pass --overwrite")
        shutil.rmtree(wip)
    tmp = wip.with_name(f"{_tmp_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name in S.arrays_of(levels):
            _create_array(root, name, layout)
        root.attrs.update({
            "format": S.FORMAT, "package_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "teacher": teacher, "pair_rule": pair_rule, "dataset": dataset, "layout": layout.to_attrs(),
            "levels": list(levels), "prepared": False, "complete": False,
        })
        tmp.rename(wip)
    except BaseException:
        _discard(tmp)
        raise
    return TeacherCache(wip, mode="r+")


def _json_error(file: Path) -> str | None:
    """Why a metadata file is not readable JSON, or None when it is."""
    try:
        json.loads(file.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"{file} is not readable JSON ({type(e).__name__}: {e}); the store's metadata is damaged: {_REBUILD}"
    return None


class TeacherCache:
    """An open store, validated against :mod:`cache.schema` on open.

    check_chunks: list the chunk files once and refuse a store that lacks one its layout
    says was written (see :meth:`missing_chunks`); off for the shard tasks, whose
    coordinator has checked."""

    def __init__(self, path, mode: str = "r", check_chunks: bool = True):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            hint = ""
            if wip_path(self.path).exists():
                hint = f" ({wip_path(self.path)} exists: the run did not finish; rerun the command to resume)"
            raise CacheError(f"{self.path}: not a teacher cache{hint}")
        bad = _json_error(self.path / "zarr.json")
        if bad:
            raise CacheError(bad)
        self._store = _BoundStore(LocalStore(str(self.path), read_only=mode == "r"), self)
        self.root = zarr.open_group(store=self._store, mode=mode)
        self.attrs = dict(self.root.attrs)
        self._arrays: dict[str, zarr.Array] = {}
        self._layout: S.LayoutAttrs | None = None
        self._validate()
        self._bind()
        if check_chunks:
            missing = self.missing_chunks()
            if missing:
                name, keys = next(iter(missing.items()))
                raise CacheError(f"{self.path}: {name} lacks {len(keys)} chunk file(s) that its layout says were "
                                 f"written (first: {keys[0]}, {self._rows_of(name, keys[0])}); the store is "
                                 f"damaged: {_REBUILD}")

    # -- validation ------------------------------------------------------------------------
    def _validate(self) -> None:
        fmt = self.attrs.get("format")
        if fmt in S.OLD_FORMATS:
            raise CacheError(f"{self.path}: a {fmt} store (no chunk checksums), this version reads {S.FORMAT!r}; "
                             "rebuild it with this version (hoi teacher-cache ... --overwrite)")
        if fmt != S.FORMAT:
            raise CacheError(f"{self.path}: format {fmt!r}, this version reads {S.FORMAT!r}; rebuild it with this "
                             "version")
        missing = [k for k in S.ROOT_ATTRS if k not in self.attrs]
        if missing:
            raise CacheError(f"{self.path}: root attribute(s) missing: {', '.join(missing)}")
        try:
            _normal_levels(self.attrs["levels"])
        except (ValueError, TypeError):
            raise CacheError(f"{self.path}: root attribute levels is {self.attrs['levels']!r}") from None
        layout = self.layout
        for name in S.arrays_of(self.levels):
            spec, arr = S.ARRAYS[name], self._open_array(name)
            shape = S.shape_of(name, layout)
            if arr.shape != shape:
                raise CacheError(f"{self.path}: {name} has shape {arr.shape}, the layout says {shape}")
            kind_ok = (arr.dtype.kind in "TUO") if spec.dtype == "str" else (arr.dtype == np.dtype(spec.dtype))
            if not kind_ok:
                raise CacheError(f"{self.path}: {name} has dtype {arr.dtype}, the schema says {spec.dtype}")

    def _bind(self) -> None:
        """Check chunk placement on every read, from the record a complete store carries. A
        work-in-progress store is being written, so it has none (verify reads it unbound)."""
        record = self.attrs.get(S.CHUNK_CRC) if self.complete else None
        if not record:
            return
        try:
            crc = {name: bytes.fromhex(record[name]) for name in self.array_names}
        except (KeyError, TypeError, ValueError):
            raise CacheError(f"{self.path}: root attribute {S.CHUNK_CRC} is malformed; the store's metadata is "
                             f"damaged: {_REBUILD}") from None
        for name, table in crc.items():
            arr = self.array(name)
            if len(table) != 4 * _num_chunks(arr):
                raise CacheError(f"{self.path}: {S.CHUNK_CRC} records {len(table) // 4} chunk(s) of {name}, the "
                                 f"layout has {_num_chunks(arr)}; {_REBUILD}")
        self._store.crc = crc

    @property
    def placement_checked(self) -> bool:
        """Whether reads check each chunk's key (a complete store made by a version that records it)."""
        return bool(self._store.crc)

    def record_chunk_crc(self) -> dict[str, str]:
        """{array name: hex of each chunk file's crc32c trailer, in chunk order}: what
        :func:`finalize` records. Reads 4 bytes per chunk file."""
        out = {}
        for name in self.array_names:
            arr, tails = self.array(name), bytearray()
            for i in range(_num_chunks(arr)):
                key = S.chunk_key(name, i, arr.ndim)
                try:
                    with open(self.path / key, "rb") as fh:
                        fh.seek(-4, os.SEEK_END)
                        tails += fh.read(4)
                except OSError as e:  # finalize runs after every shard is done: a chunk is lost
                    raise CacheError(f"{self.path}: chunk {key} of {name} cannot be read ({e.strerror}); "
                                     f"{_REBUILD}") from None
            out[name] = tails.hex()
        return out

    def _open_array(self, name: str) -> zarr.Array:
        try:
            arr = self.root[name]
        except Exception as e:  # a damaged zarr.json: name the file, not zarr's parser
            bad = _json_error(self.path / name / "zarr.json")
            if bad:
                raise CacheError(bad) from e
            if isinstance(e, KeyError):
                raise CacheError(f"{self.path}: array {name} is missing; the store is damaged: {_REBUILD}") from None
            raise
        arr = arr.with_config(_ARRAY_CONFIG)  # a runtime setting: not stored, so set on every open
        self._arrays[name] = arr
        return arr

    def check_matches(self, **wanted: dict) -> None:
        """Refuse, naming the first differing field, when ``teacher``/``pair_rule``/``dataset`` differ."""
        for group, value in wanted.items():
            if value is None:
                continue
            stored = json_form(self.attrs.get(group))  # tuples -> lists, as stored
            value = json_form(value)
            diff = (S.teacher_difference if group == "teacher" else S.first_difference)(stored, value, group)
            if diff:
                raise CacheMismatch(
                    f"{self.path} was made with a different {group}: {diff} is "
                    f"{S.lookup({group: stored}, diff)!r} in the cache but {S.lookup({group: value}, diff)!r} "
                    "was asked for; use another output path or --overwrite")

    # -- levels ----------------------------------------------------------------------------
    @property
    def levels(self) -> tuple[str, ...]:
        """The levels the store holds, in schema order: ("global",) or ("global", "union")."""
        return tuple(self.attrs["levels"])

    def require_level(self, level: str, why: str = "") -> None:
        """CacheError (one line: the store, the missing level, what needed it, the fix) unless the
        store holds ``level``. ``why``: what needs it, e.g. "the teacher baseline scores union crops"."""
        if level not in S.LEVELS:
            raise ValueError(f"unknown level {level!r}; levels are {', '.join(S.LEVELS)}")
        if level not in self.levels:
            need = f": {why}" if why else ""
            raise CacheError(f"{self.path} holds no {level} level (levels: {', '.join(self.levels)}){need}; "
                             "rebuild it with hoi teacher-cache --levels all")

    def check_levels(self, wanted) -> None:
        """Refuse to reuse the store for a run asking for levels it does not hold (a superset is fine)."""
        lacking = [lv for lv in wanted if lv not in self.levels]
        if lacking:
            raise CacheMismatch(f"{self.path} holds levels {list(self.levels)}, but levels {list(wanted)} were asked "
                             f"for (it lacks {', '.join(lacking)}); use another output path or --overwrite")

    # -- what made it ------------------------------------------------------------------------
    @property
    def teacher(self) -> S.TeacherAttrs:
        """The ``teacher`` attribute, typed (checked when the store is opened)."""
        return self._typed(S.TeacherAttrs, "teacher")

    @property
    def dataset(self) -> S.DatasetAttrs:
        """The ``dataset`` attribute, typed (checked when the store is opened)."""
        return self._typed(S.DatasetAttrs, "dataset")

    def _typed(self, cls, key: str):
        try:
            return cls.from_attrs(self.attrs.get(key), f"{self.path}: {key}")
        except ValueError as e:
            raise CacheError(f"{e}; the store's metadata is damaged: {_REBUILD}") from None

    # -- geometry --------------------------------------------------------------------------
    @property
    def layout(self) -> S.LayoutAttrs:
        """The ``layout`` attribute, typed (checked when the store is opened; never changed after)."""
        if self._layout is None:
            self._layout = self._typed(S.LayoutAttrs, "layout")
        return self._layout

    @property
    def fingerprint(self) -> str:
        """sha256 over teacher, pair rule, dataset and layout: what a checkpoint trained on it names."""
        import hashlib
        ident = {k: self.attrs[k] for k in (*S.IDENTITY_ATTRS, "layout")}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def num_images(self) -> int:
        return self.layout.num_images

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def array_names(self) -> list[str]:
        """The arrays this store has (those of its levels), in schema order."""
        return S.arrays_of(self.levels)

    def shard_images(self, k: int) -> tuple[int, int]:
        s = self.layout.images_per_shard
        return k * s, min((k + 1) * s, self.num_images)

    def shard_pair_rows(self, k: int) -> tuple[int, int]:
        rows = self.layout.shard_rows
        return rows[k], rows[k + 1]

    # -- chunks ----------------------------------------------------------------------------
    def chunk_rows(self, name: str, index: int) -> tuple[int, int]:
        """Rows [a, b) along the first axis that chunk ``index`` of ``name`` covers."""
        arr = self.array(name)
        c = arr.chunks[0]
        return index * c, min((index + 1) * c, arr.shape[0])

    def _rows_of(self, name: str, key: str) -> str:
        a, b = self.chunk_rows(name, int(key.rsplit("/c.", 1)[1].split(".")[0]))
        return f"{_ROWS.get(S.ARRAYS[name].dims[0], 'rows')} {a}..{b - 1}"

    def expected_chunks(self, done: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """int64 chunk indices (first axis) each array must have: all of a prepare-time array
        once ``prepared`` is set; of a shard array, those of the shards ``done`` (bool [K])."""
        done = self.shards_done() if done is None else done
        out = {}
        for name in self.array_names:
            arr, spec = self.array(name), S.ARRAYS[name]
            n, c = arr.shape[0], arr.chunks[0]
            if spec.writer == S.PREPARE:
                out[name] = np.arange(-(-n // c) if self.attrs["prepared"] else 0, dtype=np.int64)
            elif name == "images/shard_done":
                out[name] = np.flatnonzero(done)
            else:
                bounds = [(self.shard_images(k) if spec.dims[0] == "image" else self.shard_pair_rows(k))
                          for k in np.flatnonzero(done)]
                # shard ranges start on chunk boundaries (cache.layout), so each shard owns whole chunks
                parts = [np.arange(a // c, -(-b // c)) for a, b in bounds if b > a]
                out[name] = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return out

    def _chunk_files(self, name: str) -> set[str]:
        """File names in the array's folder: one listing, no data read (zarr writes a chunk to a
        ``.partial`` name and renames it, so only whole chunks carry their key's name)."""
        try:
            return set(os.listdir(self.path / name))
        except FileNotFoundError:
            return set()

    def stray_files(self) -> list[str]:
        """Paths (relative to the store) of the files its schema does not own: anything but the
        ``zarr.json`` of the root, of each group and of each array, and each array's chunk files
        ``c.<i>.0...``. What a kill leaves: zarr's ``c.<key>.<uuid>.partial`` temporaries."""
        owned = {"zarr.json"} | {f"{g}/zarr.json" for g in {n.split("/")[0] for n in S.ARRAYS}}
        chunk = {n: re.compile(r"c\.\d+" + r"\.0" * (len(S.ARRAYS[n].dims) - 1)) for n in S.ARRAYS}
        out = []
        for folder, _, files in os.walk(self.path):
            rel = os.path.relpath(folder, self.path)
            for f in files:
                path = f if rel == "." else f"{rel}/{f}"
                if path in owned or (rel in chunk and (f == "zarr.json" or chunk[rel].fullmatch(f))):
                    continue
                out.append(path)
        return sorted(out)

    def sweep_stray_files(self) -> list[str]:
        """Delete :meth:`stray_files` (only while no shard runs: at resume and at finalise); returns them."""
        stray = self.stray_files()
        for path in stray:
            (self.path / path).unlink(missing_ok=True)
        if stray:
            log.info("%s: removed %d file(s) an interrupted run left (e.g. %s)", self.path, len(stray), stray[0])
        return stray

    def missing_chunks(self) -> dict[str, list[str]]:
        """Keys of the chunks that the layout says were written but have no file, by array
        (only arrays that lack some). The done flags are read before listing: a shard that
        finishes meanwhile wrote its chunks before its flag."""
        done = self.shards_done()
        missing = {}
        if self.complete and not done.all():
            k = int(np.flatnonzero(~done)[0])
            missing["images/shard_done"] = [S.chunk_key("images/shard_done", k, 1)]
        for name, want in self.expected_chunks(done).items():
            if not len(want):
                continue
            files, tail = self._chunk_files(name), ".0" * (len(S.ARRAYS[name].dims) - 1)
            lack = [f"{name}/c.{i}{tail}" for i in want.tolist() if f"c.{i}{tail}" not in files]
            if lack:
                missing[name] = list(dict.fromkeys([*missing.get(name, []), *lack]))
        return missing

    def chunk_error(self, name: str, index: int) -> str | None:
        """Why chunk ``index`` of ``name`` cannot be read (checksum, decoding), or None when it can."""
        a, b = self.chunk_rows(name, index)
        try:
            self.array(name)[a:b]
        except Exception as e:  # whatever the codecs raise: this chunk alone is read
            return f"{type(e).__name__}: {e}"
        return None

    def _damage(self, name: str, sel, error: Exception) -> CacheError | None:
        """The error naming the first chunk of ``sel`` that cannot be read; None when each reads
        alone (the failure was not the data's). Runs only after a read failed."""
        arr = self.array(name)
        a, b = _first_axis_range(sel, arr.shape[0])
        c = arr.chunks[0]
        for i in range(a // c, -(-b // c)):
            why = self.chunk_error(name, i)
            if why:
                key = S.chunk_key(name, i, arr.ndim)
                return CacheError(f"{self.path}: chunk {key} of {name} ({self._rows_of(name, key)}) is damaged "
                                  f"({why[:160]}); {_REBUILD}")
        return None

    # -- reading ---------------------------------------------------------------------------
    def array(self, name: str) -> zarr.Array:
        if name not in S.ARRAYS:
            raise KeyError(f"{name} is not in the cache schema")
        spec = S.ARRAYS[name]
        if spec.level not in self.levels:
            self.require_level(spec.level, why=f"{name} was asked for")
        if name not in self._arrays:  # opening reads metadata: once per array
            self._open_array(name)
        return self._arrays[name]

    def read(self, name: str, sel=slice(None)) -> np.ndarray:
        """The values of ``name`` at ``sel``; CacheError naming the chunk when one is damaged or misplaced."""
        arr = self.array(name)
        try:
            return np.asarray(arr[sel])
        except ChunkMisplaced:
            raise
        except Exception as e:
            damage = self._damage(name, sel, e)
            if damage is None:
                raise
            raise damage from e

    def shards_done(self) -> np.ndarray:
        """bool [K]"""
        return self.read("images/shard_done")

    # -- writing ---------------------------------------------------------------------------
    def write_prepared(self, arrays: dict[str, np.ndarray]) -> None:
        """Write every prepare-time array, then mark the store prepared (one writer only)."""
        expected = {n for n in self.array_names if S.ARRAYS[n].writer == S.PREPARE}
        if set(arrays) != expected:
            raise ValueError(f"prepare arrays differ from the schema: {sorted(set(arrays) ^ expected)}")
        for name, value in arrays.items():
            self.array(name)[...] = value
        self._set_attr("prepared", True)

    def write_shard(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        """Write all of shard ``k``'s rows of the shard arrays given."""
        for name, value in arrays.items():
            lo, hi = self._shard_range(k, name)
            if value.shape[0] != hi - lo:
                raise ValueError(f"{name}: shard {k} has {hi - lo} rows, got {value.shape[0]}")
            self.write_rows(k, name, lo, hi, value)

    def write_rows(self, k: int, name: str, a: int, b: int, value: np.ndarray) -> None:
        """Write rows [a, b) of a shard array; they must be whole chunks of shard ``k``.

        This is the one place that enforces the rule that keeps concurrent shards safe:
        a starts a chunk, b ends one (or ends the shard), and both lie inside shard k.
        """
        spec = S.ARRAYS[name]
        if spec.writer != S.SHARD or name == "images/shard_done":
            raise ValueError(f"{name} is not written by shards")
        if self.complete:  # its chunk placement is recorded: a write would make it a lie
            raise CacheError(f"{self.path} is complete; shards write work-in-progress stores")
        lo, hi = self._shard_range(k, name)
        chunk = self.array(name).chunks[0]
        if not (lo <= a <= b <= hi and a % chunk == 0 and (b % chunk == 0 or b == hi)):
            raise ValueError(f"{name}: rows [{a}, {b}) are not whole chunks of shard {k} [{lo}, {hi})")
        if b > a:
            self.array(name)[a:b] = value

    def _shard_range(self, k: int, name: str) -> tuple[int, int]:
        return self.shard_images(k) if S.ARRAYS[name].dims[0] == "image" else self.shard_pair_rows(k)

    def shard_chunk_keys(self, k: int) -> list[str]:
        """Store keys of the chunks shard ``k`` writes (its done flag excepted)."""
        only = np.zeros(self.num_shards, dtype=bool)
        only[k] = True
        return [S.chunk_key(name, int(i), self.array(name).ndim) for name, indices in self.expected_chunks(only).items()
                if S.ARRAYS[name].writer == S.SHARD and name != "images/shard_done" for i in indices]

    def mark_shard_done(self, k: int) -> None:
        """Set shard ``k``'s done flag once its chunks are durable, and make the flag durable:
        after a power loss a flag set means the chunks are there."""
        keys = self.shard_chunk_keys(k)
        for key in keys:
            fsync_file(self.path / key)
        for folder in sorted({key.rsplit("/", 1)[0] for key in keys}):
            fsync_dir(self.path / folder)
        self.array("images/shard_done")[k] = True
        flag = self.path / S.chunk_key("images/shard_done", k, 1)
        fsync_file(flag)
        fsync_dir(flag.parent)

    def replace_text(self, teacher: dict, text: np.ndarray) -> None:
        """New prompts for a copied store (``hoi rescore``): the text embeddings and the teacher
        attributes that name them. The caller rewrites the scores."""
        if self.complete:
            raise CacheError(f"{self.path} is complete; rescore into a copy")
        if text.shape != self.array("text/embedding").shape:
            raise ValueError(f"text embeddings {text.shape}, the store has {self.array('text/embedding').shape}")
        self.array("text/embedding")[...] = text
        self._set_attr("teacher", teacher)

    def _set_attr(self, key: str, value) -> None:
        self._set_attrs({key: value})

    def _set_attrs(self, values: dict) -> None:
        """Set root attributes in one write of the root metadata, and in ``attrs``."""
        self.root.attrs.update(values)
        self.attrs.update(values)

    def set_attr(self, key: str, value) -> None:
        """Set a root attribute that is not part of the identity (e.g. run statistics)."""
        if key in S.IDENTITY_ATTRS or key in ("format", "layout", "levels", "prepared", "complete", S.CHUNK_CRC):
            raise ValueError(f"{key} is managed by the cache module")
        self._set_attr(key, value)

    # -- summaries -------------------------------------------------------------------------
    def describe(self) -> str:
        lines = [f"teacher cache {self.path}", f"  format {self.attrs['format']}, package "
                 f"{self.attrs['package_version']}, created {self.attrs['created']}",
                 f"  levels: {', '.join(self.levels)}"]
        done = self.shards_done()
        lines.append(f"  complete: {self.complete}  (shards done {int(done.sum())}/{len(done)}, "
                     f"prepared: {self.attrs['prepared']})")
        for group in ("teacher", "pair_rule", "dataset", "layout"):
            lines.append(f"  {group}:")
            for k, v in self.attrs[group].items():
                if k == "prompts" or k == "shard_rows":
                    v = f"[{len(v)} entries]"
                elif k == "labelspace":  # the whole label space travels in the attrs; name its size
                    v = (f"{v.get('name')}: {len(v.get('hoi', []))} HOI classes, {len(v.get('objects', []))} "
                         f"objects, {len(v.get('verbs', []))} verbs")
                lines.append(f"    {k}: {v}")
        run = self.attrs.get("last_run")
        if run:
            lines.append("  last run: " + ", ".join(f"{k} {v}" for k, v in run.items()))
        if self.attrs.get("skipped_images"):
            lines.append(f"  skipped images: {len(self.attrs['skipped_images'])}, e.g. "
                         f"{self.attrs['skipped_images'][0]}")
        lines.append("  arrays:")
        for name in self.array_names:
            a = self.array(name)
            nbytes = a.nbytes_stored() if hasattr(a, "nbytes_stored") else 0
            lines.append(f"    {name:<20} {str(a.dtype):<10} {str(a.shape):<26} chunks {str(a.chunks):<22} "
                         f"{nbytes / 2**20:9.1f} MiB")
        return "\n".join(lines)

    def verify(self) -> list[str]:
        """Problems found (empty when the store is complete and consistent): every chunk of
        every array is read (so every checksum is checked) and the values are checked
        against each other (see :mod:`cache.verify`)."""
        from .verify import verify

        return verify(self)


def _num_chunks(arr: zarr.Array) -> int:
    return -(-arr.shape[0] // arr.chunks[0])


def _first_axis_range(sel, n: int) -> tuple[int, int]:
    """Rows [a, b) along the first axis that a selection touches (the whole axis when unsure)."""
    first = sel[0] if isinstance(sel, tuple) and sel else sel
    if isinstance(first, slice):
        a, b, step = first.indices(n)
        return (a, b) if step == 1 and b > a else (0, n)
    if isinstance(first, (int, np.integer)):
        i = int(first) % n if n else 0
        return i, i + 1
    return 0, n


def open_cache(path, *, require_complete: bool = True, mode: str = "r", check_chunks: bool = True) -> TeacherCache:
    """Open a finished store; with ``require_complete=False`` also a ``.wip`` one."""
    path = Path(path)
    if not path.exists() and not require_complete and wip_path(path).exists():
        path = wip_path(path)
    c = TeacherCache(path, mode=mode, check_chunks=check_chunks)
    c.teacher, c.dataset  # noqa: B018 (typed on open: a malformed attribute is refused here, by name)
    if require_complete and not c.complete:
        raise CacheError(f"{path}: the store is not complete ({int(c.shards_done().sum())}/{c.num_shards} shards)")
    return c


def copy_store(src: TeacherCache, dst) -> TeacherCache:
    """Copy a store to ``dst.wip``, marked incomplete, for a derived store (``hoi rescore``).

    Copied under a temporary name and renamed once whole; a ``.wip`` left by an interrupted
    earlier copy is replaced (the derivation starts again from ``src``)."""
    dst = Path(dst)
    wip = wip_path(dst)
    if dst.exists():
        raise CacheError(f"{dst} exists; choose another output")
    remove(dst)  # dst is absent: this drops an interrupted copy's .wip and leftovers (teacher caches only)
    tmp = wip.with_name(f"{_tmp_prefix(dst)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(src.path, tmp)
        zarr.open_group(str(tmp), mode="r+").attrs["complete"] = False
        tmp.rename(wip)
    except BaseException:
        _discard(tmp)
        raise
    return TeacherCache(wip, mode="r+")


def finalize(cache: TeacherCache) -> Path:
    """Mark a fully written ``.wip`` store complete and move it to its final name."""
    done = cache.shards_done()
    if not done.all():
        raise CacheError(f"{cache.path}: {int((~done).sum())} shard(s) not done; cannot finalise")
    cache.sweep_stray_files()  # before the store is marked complete: a finished store holds what it owns
    # one write of the root metadata: the placement record and completion land together
    cache._set_attrs({S.CHUNK_CRC: cache.record_chunk_crc(), "complete": True})
    fsync_file(cache.path / "zarr.json")
    fsync_dir(cache.path)
    final = cache.path.with_name(cache.path.name.removesuffix(".wip"))
    if final == cache.path:
        return final
    if final.exists():
        shutil.rmtree(final)
    cache.path.rename(final)
    fsync_dir(final.parent)  # the rename that publishes the store survives a power loss
    return final
