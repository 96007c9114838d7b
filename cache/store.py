"""Create, open, validate, write and finalise a teacher cache (Zarr v3).

Life of a store at ``PATH``:

1. :func:`create` makes ``PATH.wip/`` with every array of :mod:`cache.schema` and the
   root attributes (``prepared`` and ``complete`` false);
2. the coordinator writes the prepare-time arrays and sets ``prepared``;
3. each shard writes its own chunks, then sets its ``images/shard_done`` flag (its own
   chunk); a rerun skips shards whose flag is set;
4. :func:`finalize` checks every shard is done, sets ``complete`` and renames
   ``PATH.wip`` to ``PATH``.

So a store under its final name is always complete, and a ``.wip`` store is never read
as one.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from hoidata import __version__

from . import schema as S


class CacheError(ValueError):
    """A store that is missing, incomplete, malformed, or made with another configuration."""


def wip_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".wip")


def remove(path) -> None:
    """Delete the store at ``path`` (and its ``.wip``), refusing anything that is not one: an
    --overwrite pointed at the wrong folder must not delete it."""
    for p in (Path(path), wip_path(path)):
        if not p.exists():
            continue
        try:
            fmt = json.loads((p / "zarr.json").read_text()).get("attributes", {}).get("format")
        except (OSError, ValueError):
            fmt = None
        if fmt != S.FORMAT:
            raise CacheError(f"{p} exists and is not a teacher cache; refusing to delete it, choose another output")
        shutil.rmtree(p)


def create(path, *, teacher: dict, pair_rule: dict, dataset: dict, layout: dict,
           overwrite: bool = False) -> "TeacherCache":
    """Create an empty work-in-progress store at ``PATH.wip`` (see the module docstring)."""
    wip = wip_path(path)
    if wip.exists():
        if not overwrite:
            raise CacheError(f"{wip} exists; resume it or pass --overwrite")
        shutil.rmtree(wip)
    root = zarr.open_group(str(wip), mode="w", zarr_format=3)
    for name, spec in S.ARRAYS.items():
        dtype = str if spec.dtype == "str" else spec.dtype
        fill = "" if spec.dtype == "str" else (False if spec.dtype == "bool" else 0)
        if name == "pairs/image":
            fill = -1  # padding rows stay -1 without being written
        # CLIP features in float16 barely compress, and compressing them costs the
        # writer thread CPU (and GIL) that the thread feeding the GPU needs.
        compressors = None if spec.dtype == "float16" else "auto"
        root.create_array(name, shape=S.shape_of(name, layout), chunks=S.chunks_of(name, layout),
                          dtype=dtype, fill_value=fill, compressors=compressors,
                          attributes={"description": spec.description, "writer": spec.writer})
    root.attrs.update({
        "format": S.FORMAT, "package_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teacher": teacher, "pair_rule": pair_rule, "dataset": dataset, "layout": layout,
        "prepared": False, "complete": False,
    })
    return TeacherCache(wip, mode="r+")


class TeacherCache:
    """An open store, validated against :mod:`cache.schema` on open."""

    def __init__(self, path, mode: str = "r"):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            hint = ""
            if wip_path(self.path).exists():
                hint = f" ({wip_path(self.path)} exists: the run did not finish; rerun the command to resume)"
            raise CacheError(f"{self.path}: not a teacher cache{hint}")
        self.root = zarr.open_group(str(self.path), mode=mode)
        self.attrs = dict(self.root.attrs)
        self._arrays: dict[str, zarr.Array] = {}
        self._validate()

    # -- validation ------------------------------------------------------------------------
    def _validate(self) -> None:
        fmt = self.attrs.get("format")
        if fmt != S.FORMAT:
            raise CacheError(f"{self.path}: format {fmt!r}, this version reads {S.FORMAT!r}")
        missing = [k for k in S.ROOT_ATTRS if k not in self.attrs]
        if missing:
            raise CacheError(f"{self.path}: root attribute(s) missing: {', '.join(missing)}")
        layout = self.layout
        for name, spec in S.ARRAYS.items():
            try:
                arr = self.root[name]
            except KeyError:
                raise CacheError(f"{self.path}: array {name} is missing") from None
            shape = S.shape_of(name, layout)
            if arr.shape != shape:
                raise CacheError(f"{self.path}: {name} has shape {arr.shape}, the layout says {shape}")
            kind_ok = (arr.dtype.kind in "TUO") if spec.dtype == "str" else (arr.dtype == np.dtype(spec.dtype))
            if not kind_ok:
                raise CacheError(f"{self.path}: {name} has dtype {arr.dtype}, the schema says {spec.dtype}")

    def check_matches(self, **wanted: dict) -> None:
        """Refuse, naming the first differing field, when ``teacher``/``pair_rule``/``dataset`` differ."""
        for group, value in wanted.items():
            if value is None:
                continue
            stored = json.loads(json.dumps(self.attrs.get(group)))  # tuples -> lists, as stored
            value = json.loads(json.dumps(value))
            diff = (S.teacher_difference if group == "teacher" else S.first_difference)(stored, value, group)
            if diff:
                raise CacheError(
                    f"{self.path} was made with a different {group}: {diff} is "
                    f"{S.lookup({group: stored}, diff)!r} in the cache but {S.lookup({group: value}, diff)!r} "
                    "was asked for; use another output path or --overwrite")

    # -- geometry --------------------------------------------------------------------------
    @property
    def layout(self) -> dict:
        return self.attrs["layout"]

    @property
    def fingerprint(self) -> str:
        """sha256 over teacher, pair rule, dataset and layout: what a checkpoint trained on it names."""
        import hashlib
        ident = {k: self.attrs[k] for k in (*S.IDENTITY_ATTRS, "layout")}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def num_images(self) -> int:
        return self.layout["num_images"]

    @property
    def num_shards(self) -> int:
        return self.layout["num_shards"]

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def shard_images(self, k: int) -> tuple[int, int]:
        s = self.layout["images_per_shard"]
        return k * s, min((k + 1) * s, self.num_images)

    def shard_pair_rows(self, k: int) -> tuple[int, int]:
        rows = self.layout["shard_rows"]
        return rows[k], rows[k + 1]

    # -- reading ---------------------------------------------------------------------------
    def array(self, name: str) -> zarr.Array:
        if name not in S.ARRAYS:
            raise KeyError(f"{name} is not in the cache schema")
        if name not in self._arrays:  # opening reads metadata: once per array
            self._arrays[name] = self.root[name]
        return self._arrays[name]

    def read(self, name: str, sel=slice(None)) -> np.ndarray:
        return np.asarray(self.array(name)[sel])

    def shards_done(self) -> np.ndarray:
        """bool [K]"""
        return self.read("images/shard_done")

    # -- writing ---------------------------------------------------------------------------
    def write_prepared(self, arrays: dict[str, np.ndarray]) -> None:
        """Write every prepare-time array, then mark the store prepared (one writer only)."""
        expected = {n for n, s in S.ARRAYS.items() if s.writer == S.PREPARE}
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
        lo, hi = self._shard_range(k, name)
        chunk = self.array(name).chunks[0]
        if not (lo <= a <= b <= hi and a % chunk == 0 and (b % chunk == 0 or b == hi)):
            raise ValueError(f"{name}: rows [{a}, {b}) are not whole chunks of shard {k} [{lo}, {hi})")
        if b > a:
            self.array(name)[a:b] = value

    def _shard_range(self, k: int, name: str) -> tuple[int, int]:
        return self.shard_images(k) if S.ARRAYS[name].dims[0] == "image" else self.shard_pair_rows(k)

    def mark_shard_done(self, k: int) -> None:
        self.array("images/shard_done")[k] = True

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
        self.root.attrs[key] = value
        self.attrs[key] = value

    def set_attr(self, key: str, value) -> None:
        """Set a root attribute that is not part of the identity (e.g. run statistics)."""
        if key in S.IDENTITY_ATTRS or key in ("format", "layout", "prepared", "complete"):
            raise ValueError(f"{key} is managed by the cache module")
        self._set_attr(key, value)

    # -- summaries -------------------------------------------------------------------------
    def describe(self) -> str:
        lines = [f"teacher cache {self.path}", f"  format {self.attrs['format']}, package "
                 f"{self.attrs['package_version']}, created {self.attrs['created']}"]
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
        for name in S.ARRAYS:
            a = self.root[name]
            nbytes = a.nbytes_stored() if hasattr(a, "nbytes_stored") else 0
            lines.append(f"    {name:<20} {str(a.dtype):<10} {str(a.shape):<26} chunks {str(a.chunks):<22} "
                         f"{nbytes / 2**20:9.1f} MiB")
        return "\n".join(lines)

    def verify(self) -> list[str]:
        """Problems found (empty when the store is complete and consistent)."""
        problems = []
        done = self.shards_done()
        if not done.all():
            problems.append(f"{int((~done).sum())} of {len(done)} shards not done: "
                            f"{np.flatnonzero(~done)[:10].tolist()}")
        if not self.attrs.get("prepared"):
            problems.append("prepare-time arrays were never completed")
        status = self.read("images/status")
        if done.all() and (status == S.STATUS_PENDING).any():
            problems.append(f"{int((status == S.STATUS_PENDING).sum())} images still pending in done shards")
        offs = self.read("detections/offsets")
        if offs[0] != 0 or offs[-1] != self.layout["num_detections"] or np.any(np.diff(offs) < 0):
            problems.append("detections/offsets is not a valid CSR index")
        begin, end = self.read("pairs/begin"), self.read("pairs/end")
        image = self.read("pairs/image")
        expect = np.full(len(image), -1, np.int64)
        for i in np.flatnonzero(end > begin):
            expect[begin[i]:end[i]] = i
        if not np.array_equal(expect, image):
            problems.append("pairs/image disagrees with pairs/begin and pairs/end")
        if not np.isin(status, (S.STATUS_PENDING, S.STATUS_OK, S.STATUS_SKIPPED)).all():
            problems.append("images/status holds unknown codes")
        problems += self._verify_indices(offs, begin, end, image)
        text = self.read("text/embedding").astype(np.float32)
        if not np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-3):
            problems.append("text/embedding rows are not unit length")
        ok = status == S.STATUS_OK
        valid_rows = image >= 0
        ok_rows = valid_rows & (ok[np.clip(image, 0, None)] if len(image) else valid_rows)
        for level, rows in (("global", ok), ("union", ok_rows)):
            problems += self._verify_level(level, rows, text)
        step = self.array("global/dense").chunks[0]
        for a in range(0, self.num_images, step):  # chunk by chunk: a split's map does not fit in RAM
            if not np.isfinite(self.read("global/dense", slice(a, a + step))[ok[a:a + step]]).all():
                problems.append(f"global/dense has non-finite values (images {a}..{a + step - 1})")
                break
        return problems

    def _verify_level(self, level: str, rows: np.ndarray, text: np.ndarray, block: int = 1 << 16) -> list[str]:
        """Written rows are unit embeddings whose scores are their cosines with the text: a lost
        chunk reads back as zeros, a damaged one as other numbers."""
        emb_a, score_a = self.array(f"{level}/embedding"), self.array(f"{level}/score")
        not_unit, worst = [], 0.0
        for a in range(0, len(rows), block):
            sel = np.flatnonzero(rows[a:a + block])
            if not len(sel):
                continue
            emb = np.asarray(emb_a[a:a + block])[sel].astype(np.float32)
            score = np.asarray(score_a[a:a + block])[sel].astype(np.float32)
            if not (np.isfinite(emb).all() and np.isfinite(score).all()):
                return [f"{level} embeddings or scores have non-finite values (rows {a}..{a + block - 1})"]
            bad = np.abs(np.linalg.norm(emb, axis=1) - 1) > 1e-2
            not_unit += (a + sel[bad]).tolist()
            worst = max(worst, float(np.abs(emb @ text.T - score).max()))
        problems = []
        if not_unit:
            problems.append(f"{level}/embedding: {len(not_unit)} written row(s) are not unit length "
                            f"(first: row {not_unit[0]}); lost or damaged chunks?")
        if worst > 2e-2:
            problems.append(f"{level}/score differs from embedding x text by up to {worst:.3f}")
        return problems

    def _verify_indices(self, det_offs, begin, end, image) -> list[str]:
        """Pairs inside their image's detections and ranges; ground truth indices in range."""
        problems = []
        if len(begin) > 1 and np.any(begin[1:] < end[:-1]):
            problems.append("pairs/begin and pairs/end ranges of images overlap")
        rows = image >= 0
        for role in ("human", "object"):
            det = self.read(f"pairs/{role}")[rows]
            img = image[rows]
            if np.any((det < det_offs[img]) | (det >= det_offs[img + 1])):
                problems.append(f"pairs/{role} names a detection outside its image")
        g, hoi = self.read("gt/offsets"), self.read("gt/hoi")
        if g[0] != 0 or g[-1] != len(hoi) or np.any(np.diff(g) < 0):
            problems.append("gt/offsets is not a valid CSR index")
        if len(hoi) and (hoi.min() < 0 or hoi.max() >= self.layout["num_classes"]):
            problems.append("gt/hoi holds a class out of range")
        return problems


def open_cache(path, *, require_complete: bool = True, mode: str = "r") -> TeacherCache:
    """Open a finished store; with ``require_complete=False`` also a ``.wip`` one."""
    path = Path(path)
    if not path.exists() and not require_complete and wip_path(path).exists():
        path = wip_path(path)
    c = TeacherCache(path, mode=mode)
    if require_complete and not c.complete:
        raise CacheError(f"{path}: the store is not complete ({int(c.shards_done().sum())}/{c.num_shards} shards)")
    return c


def copy_store(src: TeacherCache, dst) -> TeacherCache:
    """Copy a store to ``dst.wip``, marked incomplete, for a derived store (``hoi rescore``)."""
    dst = Path(dst)
    wip = wip_path(dst)
    if dst.exists() or wip.exists():
        raise CacheError(f"{dst} exists; choose another output")
    shutil.copytree(src.path, wip)
    out = TeacherCache(wip, mode="r+")
    out._set_attr("complete", False)
    return out


def finalize(cache: TeacherCache) -> Path:
    """Mark a fully written ``.wip`` store complete and move it to its final name."""
    done = cache.shards_done()
    if not done.all():
        raise CacheError(f"{cache.path}: {int((~done).sum())} shard(s) not done; cannot finalise")
    cache._set_attr("complete", True)
    final = cache.path.with_name(cache.path.name.removesuffix(".wip"))
    if final == cache.path:
        return final
    if final.exists():
        shutil.rmtree(final)
    cache.path.rename(final)
    return final
