"""The teacher cache's schema: every array's name, dtype, dims, chunking and meaning.

The writer (``pipeline``) and every reader (``trainer``, evaluation, ``hoi cache``) go
through this module; nothing else names Zarr paths. Opening a store validates it
against this table.

Sizes (root attribute ``layout``): N images, C HOI classes, D joint embedding width,
H x W dense grid, T detections, G ground-truth pairs, K shards, R pair rows.

Levels (root attribute ``levels``): every store holds the ``global`` level (one CLIP pass
per image: what the student reads, and the boxes and pairs it scores); unless built with
``--levels global`` it also holds the ``union`` level (a CLIP pass per union box: the
teacher's supervision). An array's ``level`` says which; a store lacks the arrays of the
levels it does not hold.

Integrity: every chunk of every array ends in a crc32c of its bytes (after the
compressor), and chunks are written even when they equal the fill value, so a missing
chunk file is always a lost chunk. Chunk keys are ``c.I.0...`` (``.`` separator): each
array's chunks are files of one folder, listed in one call when a store is opened.

Pairs are humans x objects from the detections (the pair rule in the root attributes).
Their rows are laid out shard by shard, and each shard's rows start on a multiple of
``pair_chunk`` (padding rows between shards have ``pairs/image = -1``): so every chunk
of every array that a shard writes belongs to that shard alone. Zarr 3 has no write
locks, and two writers that share a chunk lose data silently.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

FORMAT = "hoi-cache/2"
# Earlier formats: refused by name (hoi-cache/1 had no chunk checksums and no levels), but
# still recognised as teacher caches that --overwrite may delete.
OLD_FORMATS = ("hoi-cache/1",)

GLOBAL, UNION = "global", "union"
LEVELS = (GLOBAL, UNION)
# --levels choices: the levels a store built with each holds.
LEVEL_CHOICES = {"all": LEVELS, "global": (GLOBAL,)}

# Who writes an array: "prepare" (once, by the coordinator, before any shard) or
# "shard" (by the task of the shard that owns the rows).
PREPARE, SHARD = "prepare", "shard"

# Image status codes in images/status.
STATUS_PENDING, STATUS_OK, STATUS_SKIPPED = 0, 1, 2


@dataclass(frozen=True)
class ArraySpec:
    dtype: str
    dims: tuple[str, ...]
    writer: str
    description: str
    level: str = GLOBAL  # the level whose stores hold this array


# dims: names resolved by `dim_sizes`; "image" and "pair" are chunked by the shard layout.
ARRAYS: dict[str, ArraySpec] = {
    "text/embedding": ArraySpec("float32", ("class", "embed"), PREPARE,
                                "L2-normalised text embedding of each HOI class (prompt templates averaged)"),
    "text/verb": ArraySpec("int32", ("class",), PREPARE, "verb of each HOI class"),
    "text/object": ArraySpec("int32", ("class",), PREPARE, "object of each HOI class"),
    "text/name": ArraySpec("str", ("class",), PREPARE, "'verb object' name of each HOI class"),
    "images/file_name": ArraySpec("str", ("image",), PREPARE, "file name relative to the images folder"),
    "images/size": ArraySpec("int32", ("image", "two"), PREPARE, "(width, height) in pixels"),
    "images/status": ArraySpec("int8", ("image",), SHARD, "0 pending, 1 encoded, 2 skipped (unreadable)"),
    "images/shard_done": ArraySpec("bool", ("shard",), SHARD, "set by a shard after all its writes"),
    "detections/offsets": ArraySpec("int64", ("image1",), PREPARE,
                                   "CSR: detections of image i are rows offsets[i]:offsets[i+1]"),
    "detections/box": ArraySpec("float32", ("det", "four"), PREPARE,
                               "xyxy, continuous pixel coordinates, clipped to the image"),
    "detections/score": ArraySpec("float32", ("det",), PREPARE, "detector confidence"),
    "detections/label": ArraySpec("int32", ("det",), PREPARE, "object class in the label space's order"),
    "pairs/begin": ArraySpec("int64", ("image",), PREPARE, "first pair row of each image"),
    "pairs/end": ArraySpec("int64", ("image",), PREPARE, "one past the last pair row of each image"),
    "pairs/image": ArraySpec("int32", ("pair",), PREPARE, "image of each pair row; -1 for padding rows"),
    "pairs/human": ArraySpec("int64", ("pair",), PREPARE, "detection row of the human"),
    "pairs/object": ArraySpec("int64", ("pair",), PREPARE, "detection row of the object"),
    "pairs/box": ArraySpec("float32", ("pair", "four"), PREPARE, "union box of human and object (before any margin)"),
    "global/embedding": ArraySpec("float16", ("image", "embed"), SHARD, "L2-normalised image embedding"),
    "global/score": ArraySpec("float16", ("image", "class"), SHARD, "raw cosine similarity image x HOI text"),
    "global/dense": ArraySpec("float16", ("image", "grid_h", "grid_w", "embed"), SHARD,
                              "patch tokens projected into the joint space (not normalised)"),
    "union/embedding": ArraySpec("float16", ("pair", "embed"), SHARD, "L2-normalised embedding of the union crop",
                                 UNION),
    "union/score": ArraySpec("float16", ("pair", "class"), SHARD, "raw cosine similarity union crop x HOI text",
                             UNION),
    "gt/offsets": ArraySpec("int64", ("image1",), PREPARE, "CSR: ground-truth pairs of image i"),
    "gt/box_h": ArraySpec("float32", ("gt", "four"), PREPARE, "human box, continuous coordinates"),
    "gt/box_o": ArraySpec("float32", ("gt", "four"), PREPARE, "object box, continuous coordinates"),
    "gt/hoi": ArraySpec("int32", ("gt",), PREPARE, "HOI class"),
    "gt/verb": ArraySpec("int32", ("gt",), PREPARE, "verb"),
    "gt/object": ArraySpec("int32", ("gt",), PREPARE, "object class"),
}

# Root attribute keys every store has.
ROOT_ATTRS = ("format", "package_version", "created", "teacher", "pair_rule", "dataset", "layout",
              "levels", "prepared", "complete")
# Set by finalize: {array: hex crc32c trailer of each chunk}, binding each chunk to its key.
CHUNK_CRC = "chunk_crc"
# Groups of attributes that must match what a command asks for (compared field by field).
IDENTITY_ATTRS = ("teacher", "pair_rule", "dataset")


def arrays_of(levels) -> list[str]:
    """The arrays a store holding ``levels`` has, in schema order."""
    return [name for name, spec in ARRAYS.items() if spec.level in levels]


def chunk_key(name: str, index: int, ndim: int) -> str:
    """The store key of chunk ``index`` (along the first axis, the only chunked one) of ``name``."""
    return f"{name}/c." + ".".join([str(index)] + ["0"] * (ndim - 1))


def dim_sizes(layout: LayoutAttrs) -> dict[str, int]:
    """Size of each dim name from the ``layout`` root attribute."""
    return {
        "image": layout.num_images, "image1": layout.num_images + 1, "class": layout.num_classes,
        "embed": layout.embed_dim, "grid_h": layout.grid[0], "grid_w": layout.grid[1],
        "det": layout.num_detections, "gt": layout.num_gt, "pair": layout.num_pair_rows,
        "shard": layout.num_shards, "two": 2, "four": 4,
    }


def shape_of(name: str, layout: LayoutAttrs) -> tuple[int, ...]:
    sizes = dim_sizes(layout)
    return tuple(sizes[d] for d in ARRAYS[name].dims)


def chunks_of(name: str, layout: LayoutAttrs) -> tuple[int, ...]:
    """Chunk shape: shard-aligned along images and pairs, 1 along shards, whole elsewhere
    (so only the first axis is ever chunked).

    Prepare-time arrays use large chunks along their first axis (they are read whole).
    """
    spec, sizes = ARRAYS[name], dim_sizes(layout)
    out = []
    for d in spec.dims:
        if d == "image":
            out.append(layout.image_chunk)
        elif d == "pair":
            out.append(layout.pair_chunk)
        elif d == "shard":
            out.append(1)
        elif d in ("image1", "det", "gt"):
            out.append(max(1, min(sizes[d], 1 << 16)))
        else:
            out.append(max(1, sizes[d]))
    return tuple(out)


def first_difference(stored, wanted, path: str = "") -> str | None:
    """The first field (dotted path) where two attribute trees differ, or None."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for k in [*wanted, *(k for k in stored if k not in wanted)]:  # the asker's order: causes first
            sub = f"{path}.{k}" if path else k
            if k not in stored or k not in wanted:
                return sub
            d = first_difference(stored[k], wanted[k], sub)
            if d:
                return d
        return None
    return None if stored == wanted else path


def teacher_difference(stored: dict, wanted: dict, path: str = "teacher") -> str | None:
    """The first differing field of two teacher configs; where the weights' sha256 agree,
    where they were loaded from does not count: the file (``pretrained``), and the folder of
    a ``local-dir:`` model (the same CLIP copied or moved elsewhere)."""
    if isinstance(stored, dict) and isinstance(wanted, dict) and stored.get("weights_sha256") and \
            stored.get("weights_sha256") == wanted.get("weights_sha256"):
        wanted = {**wanted, "pretrained": stored.get("pretrained")}
        if all(str(t.get("model", "")).startswith("local-dir:") for t in (stored, wanted)):
            wanted["model"] = stored.get("model")
    return first_difference(stored, wanted, path)


def lookup(tree: dict, path: str):
    for k in path.split("."):
        if not isinstance(tree, dict) or k not in tree:
            return "<absent>"
        tree = tree[k]
    return tree


# -- root attributes, typed ---------------------------------------------------------------
# Readers use these records (TeacherCache.teacher, .dataset, .layout), never string keys into the
# attribute dicts; writers build them and store to_attrs(). A record read from a store keeps
# the keys it lacked (older versions) out of to_attrs, and keys this version does not know
# (a synthetic teacher's seed) in, so what it writes back is what was read.

@dataclass(frozen=True)
class _Attrs:
    extra: dict = field(default_factory=dict, kw_only=True)          # keys this version does not know
    absent: frozenset = field(default=frozenset(), kw_only=True)     # known keys the stored form lacks

    @classmethod
    def _known(cls) -> list:
        return [f for f in fields(cls) if f.name not in ("extra", "absent")]

    @classmethod
    def from_attrs(cls, d, source: str):
        """The record of the stored dict ``d``; ``source`` names it in errors (a ValueError
        naming the field whose value has the wrong type)."""
        if not isinstance(d, dict):
            raise ValueError(f"{source} is {type(d).__name__}, not an object of fields")
        known = cls._known()
        values = {}
        for f in known:
            if f.name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"{source} has no {f.name}")
                continue
            value = d[f.name]
            kinds = _ATTR_TYPES[f.type]
            if value is not None or "None" not in f.type:
                if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                    raise ValueError(f"{source}.{f.name} is {value!r}, not {f.type}")
            values[f.name] = tuple(value) if isinstance(value, list) else value
        names = {f.name for f in known}
        return cls(**values, extra={k: v for k, v in d.items() if k not in names},
                   absent=frozenset(f.name for f in known if f.name not in d))

    def to_attrs(self) -> dict:
        """The stored form: known fields in declaration order (lists for tuples), then the rest."""
        out = {f.name: _stored(getattr(self, f.name)) for f in self._known() if f.name not in self.absent}
        return {**out, **self.extra}


def _stored(value):
    return list(value) if isinstance(value, tuple) else value


# annotation (as written in the records below) -> the JSON types it accepts
_ATTR_TYPES = {"str": (str,), "str | None": (str,), "int": (int,), "int | None": (int,), "float": (int, float),
               "tuple": (tuple, list), "tuple | None": (tuple, list), "dict | None": (dict,),
               "dict | str | None": (dict, str)}


@dataclass(frozen=True)
class TeacherAttrs(_Attrs):
    """The ``teacher`` root attribute: what defines the CLIP that scored the store (compared
    on reuse; a checkpoint records it). Everything but ``model`` is optional: a synthetic
    teacher (tests, benchmarks) has only what its readers need."""

    model: str
    pretrained: str | None = None         # tag or weights file it was loaded from
    weights_sha256: str | None = None     # what identifies the weights, wherever they are
    prompts: tuple = ()                   # one per HOI class, as in the label space
    templates: tuple = ("{}",)            # prompt templates, embeddings averaged over them
    prompts_sha256: str | None = None
    crop_mode: str | None = None          # None: not recorded (stores of an early version)
    union_margin: float = 0.0
    input_size: int | None = None         # the encoder's input, px
    global_size: int | None = None        # the global pass's input, px
    mean: tuple | None = None
    std: tuple | None = None
    interpolation: str | None = None
    resize_mode: str | None = None
    precision: str | None = None


@dataclass(frozen=True)
class DatasetAttrs(_Attrs):
    """The ``dataset`` root attribute: label space, images, detections and ground truth, by
    content, and the split when known."""

    split: str | None = None              # absent in stores made before it was recorded
    labelspace: dict | str | None = None  # the whole label space (hoidata schema), or a name (early stores)
    labelspace_sha256: str | None = None
    num_images: int | None = None
    images_sha256: str | None = None
    detections_sha256: str | None = None
    detector: dict | None = None          # what the detections file says made it
    annotations_sha256: str | None = None


@dataclass(frozen=True)
class LayoutAttrs(_Attrs):
    """The ``layout`` root attribute: the size of every dim and the shard geometry, in the
    order the store writes them (:meth:`cache.layout.Layout.record` builds it)."""

    num_images: int                       # N
    images_per_shard: int
    image_chunk: int                      # a divisor of images_per_shard
    pair_chunk: int                       # every shard's pair rows start on a multiple of it
    num_shards: int                       # K
    num_pair_rows: int                    # R: the pairs and the padding between shards
    num_pairs: int                        # P <= R: the pairs alone
    shard_rows: tuple                     # int [K + 1]: each shard's first pair row, then R
    num_classes: int                      # C
    embed_dim: int                        # D
    grid: tuple                           # (H, W) of the dense map
    num_detections: int                   # T
    num_gt: int                           # G (0: built without annotations)
