"""Label spaces: objects, verbs and HOI classes of a dataset, in one JSON schema.

A label space is data, not code. HICO-DET's ships as package data
(``hoidata/data/hico_det/labelspace.json``); any other dataset (the bundled
minibench, for one) writes a file of the same schema and is loaded the same way.

Schema (``"schema": "hoi-labelspace/1"``)::

    name               str
    objects            [O] object names, in the dataset's object order
    verbs              [V] verb names
    hoi                [C] [verb, object] of each HOI class, in official order
    human              index of the person object (the subject of every pair)
    train_counts       [C] training box pairs per class (Rare: fewer than rare_threshold)
    rare_threshold     int (10 for HICO-DET)
    prompts            [C] one CLIP prompt per class
    zero_shot_splits   {name: {"setting": str, "unseen": [class, ...]}}
    coco80_to_object   [80] object index of each COCO class (0-based COCO-80 order), -1 if none
    coco91_to_object   {"<COCO category id>": object index}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from hoicore.errors import HoiError
from hoicore.files import write_json_atomic

SCHEMA = "hoi-labelspace/1"
BUILTIN = ("hico_det",)
_REQUIRED = ("name", "objects", "verbs", "hoi", "human", "train_counts", "rare_threshold", "prompts")


class LabelSpaceError(HoiError, ValueError):
    """A label-space file that does not follow the schema."""


def _whole(x) -> int:
    """An index or count from JSON: an int, or a string of one (JSON object keys); never a
    float or bool, which int() would truncate or accept silently."""
    if isinstance(x, bool) or not isinstance(x, (int, str)):
        raise ValueError(f"expected an integer, got {x!r}")
    return int(x)


@dataclass(frozen=True)
class LabelSpace:
    """Objects, verbs and HOI classes of one dataset (see the module docstring for fields)."""

    name: str
    objects: tuple[str, ...]
    verbs: tuple[str, ...]
    hoi: tuple[tuple[int, int], ...]
    human: int
    train_counts: tuple[int, ...]
    rare_threshold: int
    prompts: tuple[str, ...]
    zero_shot_splits: dict = field(default_factory=dict)
    coco80_to_object: tuple[int, ...] = ()
    coco91_to_object: dict = field(default_factory=dict)
    # classes asked for in words (hoidata.classes.query_labelspace); not part of the file
    asked: tuple[int, ...] = field(default=(), compare=False)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "LabelSpace":
        if d.get("schema") != SCHEMA:
            raise LabelSpaceError(f"{source}: 'schema' must be {SCHEMA!r}, found {d.get('schema')!r}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise LabelSpaceError(f"{source}: missing field(s) {', '.join(missing)}")
        for key in ("objects", "verbs", "prompts"):
            if not isinstance(d[key], list) or not all(isinstance(x, str) for x in d[key]):
                raise LabelSpaceError(f"{source}: '{key}' must be a list of strings")
        try:
            ls = cls._from_fields(d)
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            raise LabelSpaceError(f"{source}: malformed field ({e!r}); see the schema in hoidata/labelspace.py") from e
        ls._validate(source)
        return ls

    @classmethod
    def _from_fields(cls, d: dict) -> "LabelSpace":
        return cls(
            name=str(d["name"]),
            objects=tuple(d["objects"]),
            verbs=tuple(d["verbs"]),
            hoi=tuple((_whole(v), _whole(o)) for v, o in d["hoi"]),
            human=_whole(d["human"]),
            train_counts=tuple(_whole(x) for x in d["train_counts"]),
            rare_threshold=_whole(d["rare_threshold"]),
            prompts=tuple(d["prompts"]),
            zero_shot_splits={k: {"setting": v.get("setting", k), "unseen": [_whole(c) for c in v["unseen"]]}
                              for k, v in d.get("zero_shot_splits", {}).items()},
            coco80_to_object=tuple(_whole(x) for x in d.get("coco80_to_object", ())),
            coco91_to_object={_whole(k): _whole(v) for k, v in d.get("coco91_to_object", {}).items()},
        )

    @classmethod
    def load(cls, name_or_path: str | Path) -> "LabelSpace":
        """Load a built-in label space by name (``hico_det``) or a JSON file by path."""
        if str(name_or_path) in BUILTIN:
            ref = resources.files("hoidata") / "data" / str(name_or_path) / "labelspace.json"
            return cls.from_dict(json.loads(ref.read_text()), source=str(name_or_path))
        path = Path(name_or_path)
        if not path.is_file():
            raise LabelSpaceError(
                f"label space {str(name_or_path)!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise LabelSpaceError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "name": self.name, "objects": list(self.objects), "verbs": list(self.verbs),
            "hoi": [list(p) for p in self.hoi], "human": self.human,
            "train_counts": list(self.train_counts), "rare_threshold": self.rare_threshold,
            "prompts": list(self.prompts), "zero_shot_splits": self.zero_shot_splits,
            "coco80_to_object": list(self.coco80_to_object),
            "coco91_to_object": {str(k): v for k, v in sorted(self.coco91_to_object.items())},
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    def _validate(self, source: str) -> None:
        nc, no, nv = len(self.hoi), len(self.objects), len(self.verbs)
        def bad(msg: str):
            raise LabelSpaceError(f"{source}: {msg}")
        for c, (v, o) in enumerate(self.hoi):
            if not (0 <= v < nv and 0 <= o < no):
                bad(f"HOI class {c} = (verb {v}, object {o}) is out of range ({nv} verbs, {no} objects)")
        for key in ("objects", "verbs"):
            names = getattr(self, key)
            if len(set(names)) != len(names):
                bad(f"'{key}' names {next(n for n in names if names.count(n) > 1)!r} more than once")
        if len(set(self.hoi)) != nc:
            bad("HOI classes must be distinct (verb, object) pairs")
        if not 0 <= self.human < no:
            bad(f"'human' = {self.human} is not an object index")
        for key in ("train_counts", "prompts"):
            if len(getattr(self, key)) != nc:
                bad(f"'{key}' has {len(getattr(self, key))} entries for {nc} HOI classes")
        for k, split in self.zero_shot_splits.items():
            if any(not 0 <= c < nc for c in split["unseen"]):
                bad(f"zero-shot split {k!r} names a class out of range")
        if self.coco80_to_object and len(self.coco80_to_object) != 80:
            bad("'coco80_to_object' must have 80 entries")
        if any(not -1 <= o < no for o in self.coco80_to_object) or any(
                not 0 <= o < no for o in self.coco91_to_object.values()):
            bad("a COCO map names an object out of range")
        if any(not 1 <= k <= 90 for k in self.coco91_to_object):
            bad("'coco91_to_object' keys must be COCO category ids 1..90")

    # -- derived tables ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.hoi)

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    @cached_property
    def hoi_verb(self) -> np.ndarray:
        """int64 [C]: verb of each class."""
        return np.array([v for v, _ in self.hoi], dtype=np.int64)

    @cached_property
    def hoi_object(self) -> np.ndarray:
        """int64 [C]: object of each class."""
        return np.array([o for _, o in self.hoi], dtype=np.int64)

    @cached_property
    def object_class_mask(self) -> np.ndarray:
        """bool [O, C]: True where class c is an HOI class of object o."""
        m = np.zeros((self.num_objects, self.num_classes), dtype=bool)
        m[self.hoi_object, np.arange(self.num_classes)] = True
        return m

    def classes_of_object(self, obj: int) -> np.ndarray:
        """int64 [k]: the HOI classes whose object is ``obj``, in class order."""
        return np.flatnonzero(self.object_class_mask[obj])

    @cached_property
    def rare(self) -> np.ndarray:
        """bool [C]: fewer than ``rare_threshold`` training pairs."""
        return np.array(self.train_counts) < self.rare_threshold

    def class_index(self, verb: int, obj: int) -> int:
        """HOI class of (verb, object); KeyError when the pair is not a class."""
        return self._pair_to_class[(int(verb), int(obj))]

    @cached_property
    def _pair_to_class(self) -> dict:
        return {p: c for c, p in enumerate(self.hoi)}

    def class_name(self, c: int) -> str:
        v, o = self.hoi[c]
        return f"{self.verbs[v]} {self.objects[o]}"

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: two label spaces are the same iff this matches."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def object_from_coco(self, ids, kind: str = "coco91") -> np.ndarray:
        """Map COCO ids to object indices (-1 where the dataset has no such object).

        ``kind='coco91'``: COCO category ids (1..90 with gaps), as detectors write them.
        ``kind='coco80'``: 0-based index among the 80 COCO classes.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if kind == "coco91":
            # sized by the map, not by the ids: a category id of 1e13 must not allocate 1e13 entries
            lut = np.full(max(91, max(self.coco91_to_object, default=0) + 1), -1, dtype=np.int64)
            for k, v in self.coco91_to_object.items():
                lut[k] = v
            out = np.where((ids >= 0) & (ids < len(lut)), lut[np.clip(ids, 0, len(lut) - 1)], -1)
        elif kind == "coco80":
            lut = np.array(self.coco80_to_object, dtype=np.int64)
            out = np.where((ids >= 0) & (ids < 80), lut[np.clip(ids, 0, 79)], -1)
        else:
            raise ValueError(f"kind must be 'coco91' or 'coco80', not {kind!r}")
        return out


def hico_det() -> LabelSpace:
    """The HICO-DET label space (80 objects, 117 verbs, 600 classes)."""
    return LabelSpace.load("hico_det")
