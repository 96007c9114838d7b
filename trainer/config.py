"""Every switch of a training run, in one dataclass that round-trips through JSON.

Each field carries its help text, choices and bounds as metadata: the command
line builds its options from this table, so an option is declared once, here.

Fields marked ``runtime`` change how a run executes, not what it computes; a resumed run
may change them (and may raise ``epochs``), every other field must match the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hoicore.errors import HoiError
from hoicore.files import load_json
from hoicore.options import check_fields, option

from .branches import BRANCHES, BY_NAME, FUSED, GLOBAL, LOSS_TARGETS, LOSS_WEIGHTS, PAIR_BRANCHES, Branch
from .branches import UNION as UNION_BRANCH

# Scorers of cached pairs that `predict` knows (see trainer.predict).
PREDICTION_MODELS = ("student", "teacher", "dense", "random")
# What the student learns from: CLIP's scores (no annotation), or the cache's ground truth as
# image-level labels (weakly supervised) or as labels of the candidate pairs (fully supervised).
SUPERVISION = tuple(LOSS_TARGETS)  # ("clip", "image-labels", "pair-labels")
LABELLED = SUPERVISION[1:]


class ConfigError(HoiError, ValueError):
    """A configuration that cannot run; the message names the fields and the fix."""


@dataclass(frozen=True)
class Scoring:
    """How pair rows are scored from the student's branches: the same for every command that
    predicts (on a cache: ``hoi predict`` / ``hoi eval``; from photos: ``hoi detect``)."""

    det_exponent: float = option(1.0, "Pair scores are multiplied by (human score x object score) to this power.")
    top_k: int = option(0, "Keep the k best rows per image; 0 keeps all.", minimum=0)
    union_weight: float = option(0.5, "Late fusion: the union branch's share of the pair scores, the human-object "
                                      "branch has the rest (0.5: their average). Choose it on a validation split, "
                                      "not the test.", minimum=0, maximum=1)

    def __post_init__(self):
        check_fields(self, ConfigError)


@dataclass
class TrainConfig:
    # -- model ----------------------------------------------------------------------------
    hidden_dim: int = option(256, "Width of the student's features.", minimum=1, maximum=8192)
    roi_size: int = option(3, "RoI-align output size (roi_size x roi_size cells per box).", minimum=1, maximum=32)
    global_branch: bool = option(True, "Global branch: image-level HOI scores from the pooled map.")
    ho_branch: bool = option(True, "Human-object branch: pair scores from human and object features and layout.")
    union_branch: bool = option(True, "Union branch: pair scores from union-box features.")
    adapters: str = option("per-level", "Features over the cached map: one adapter per supervision level "
                                      "('per-level': the global branch and human/object boxes; union boxes), so "
                                      "one level's losses cannot bend the other's features, or one for all "
                                      "branches ('shared').", ("per-level", "shared"))
    context: str = option("depthwise", "How each cell of the adapted map sees its neighbours: a residual 3 x 3 "
                                "convolution ('conv'), a depthwise 3 x 3 then pointwise one ('depthwise', about "
                                "a ninth of the cost), or not at all ('none': the cached tokens carry context "
                                "already).", ("conv", "depthwise", "none"))
    fusion: str = option("late", "Pair scores: 'late' combines the human-object and union branches' scores; "
                               "'early' concatenates their features and scores once.", ("late", "early"))
    residual: bool = option(False, "Each branch's embedding is CLIP's own embedding of its region (the cached dense "
                                   "map, already in the joint space, averaged over the grid or RoI-pooled over the "
                                   "union box) plus a learned correction that starts at zero, with the logit scale "
                                   "starting at 1 / --temperature: an untrained student is CLIP's dense zero-shot "
                                   "scorer, and training bends it only where the seen classes ask.")
    crop_mode: str = option("auto", "How the teacher made the whole image (dense map) and union boxes square: "
                                  "'squash', 'pad' (grow to the long side) or 'center' (cut to the short side); "
                                  "'auto' reads the cache's teacher.crop_mode, else squash.",
                          ("auto", "squash", "pad", "center"))
    # -- soft labels and losses -----------------------------------------------------------
    temperature: float = option(0.01, "Soft labels: softmax(raw cosine / temperature); CLIP's own is 0.01.",
                                minimum=0, min_open=True)
    label_support: str = option("object", "Pair soft labels (union and human-object) over the classes of the "
                                        "pair's detected object, or over all classes.", ("object", "all"))
    mil: str = option("max", "Multiple-instance pooling of pair scores over an image: 'max', or 'lme' "
                           "(log-mean-exp, a soft maximum).", ("max", "lme"))
    mil_temperature: float = option(1.0, "Temperature of 'lme' pooling, in logit units (smaller: closer to max).",
                                    minimum=0, min_open=True)
    w_global: float = option(1.0, "Weight of the global loss (global branch <- global CLIP scores); 0 disables it.",
                             minimum=0)
    w_mil: float = option(1.0, "Weight of the MIL loss (human-object pair scores pooled <- global CLIP "
                             "scores), or with --supervision pair-labels of the human-object branch's per-pair "
                             "loss; 0 disables it.", minimum=0)
    w_union: float = option(1.0, "Weight of the union loss (union pair scores <- union CLIP scores); 0 disables it.",
                            minimum=0)
    w_feature: float = option(10.0, "Weight of the feature loss: 1 - cosine of each branch's embedding to CLIP's "
                                   "embedding of the same region, the global branch's to the image's global "
                                   "embedding and, where the union level supervises (a union or fused branch), "
                                   "every pair branch's to the union crop's. It names no class, so it keeps the "
                                   "whole embedding space, the directions of unseen classes included; 0 disables it.",
                                   minimum=0)
    w_contrast: float = option(0.0, "Weight of the contrastive feature loss: each branch's embedding must pick CLIP's "
                                    "embedding of its own region among those of the batch (cross-entropy over "
                                    "cosines / 0.07), the same targets as --w-feature; it keeps what tells regions "
                                    "apart, not only their common direction; 0 disables it.", minimum=0)
    unseen: str = option("", "Zero-shot split of the cache's label space (e.g. rare_first, non_rare_first, "
                           "unseen_object, unseen_verb) whose unseen classes are removed from every training "
                           "target: no soft label, no loss term, no text embedding in any loss. Test time still "
                           "scores every class through its text embedding. '' trains on all classes.")
    supervision: str = option("clip", "What the branches learn from. 'clip' (no annotation): CLIP's scores, as "
                                     "above. 'image-labels' (weakly supervised): the image's ground-truth HOI classes "
                                     "replace the global CLIP scores as the target of the global and MIL losses; the "
                                     "union branch still learns from CLIP's union scores, the only per-pair target "
                                     "without pair annotation. 'pair-labels' (fully supervised): each candidate pair "
                                     "takes the classes of the ground-truth pairs it matches (IoU >= 0.5 for both "
                                     "boxes, the evaluation's rule), none when it matches none, and every pair branch "
                                     "learns from those (with a learned 'no interaction' score a negative can take); "
                                     "the global branch from the image's classes. The labelled modes need a cache "
                                     "built with --annotations; --unseen removes its classes from the labels.",
                              SUPERVISION)
    # -- optimisation ---------------------------------------------------------------------
    epochs: int = option(20, "Epochs over the training cache.", minimum=1, maximum=100000)
    batch_size: int = option(32, "Images per step (all their pairs come along).", minimum=1, maximum=65536)
    lr: float = option(1e-3, "Peak learning rate (AdamW).", minimum=0, min_open=True)
    weight_decay: float = option(0.05, "AdamW weight decay (not on biases, norms and logit scales).", minimum=0)
    warmup: float = option(0.05, "Linear warm-up, as a fraction of all steps; then cosine decay.",
                           minimum=0, maximum=1, max_open=True)
    min_lr_ratio: float = option(0.01, "Final learning rate as a fraction of --lr.", minimum=0, maximum=1)
    clip_grad: float = option(1.0, "Clip the gradient norm to this; 0 disables clipping.", minimum=0)
    amp: bool = option(True, "Mixed precision (bfloat16 autocast) on CUDA; ignored on CPU.")
    seed: int = option(0, "Seed of the initial weights and the data order.")
    # -- data -----------------------------------------------------------------------------
    in_memory: str = option("auto", "Hold the whole split in RAM ('yes'), stream it from Zarr in chunk-aligned "
                                  "blocks ('no'), or decide by --in-memory-limit-mb ('auto').",
                          ("auto", "yes", "no"))
    in_memory_limit_mb: int = option(2048, "'auto' holds a split in RAM when it needs less than this.", minimum=0)
    block_images: int = option(256, "Images per streamed block (rounded to whole image chunks of the cache).",
                               minimum=1, maximum=1 << 20)
    shuffle_blocks: int = option(4, "Streaming: blocks whose images are shuffled together (memory: this many "
                                  "blocks, plus --prefetch read ahead).", minimum=1, maximum=4096)
    prefetch: int = option(2, "Streaming: blocks read ahead by a background thread.", runtime=True,
                           minimum=0, maximum=64)
    # -- runtime --------------------------------------------------------------------------
    device: str = option("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.", runtime=True)
    progress: bool = option(True, "Show a progress bar.", runtime=True)
    threads: int = option(0, "CPU threads for torch; 0 keeps torch's default. On a CPU shared with other jobs, "
                           "1 avoids the slowdown of oversubscribed threads.", runtime=True, minimum=0, maximum=1024)

    # -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        """Build from a dict (e.g. a checkpoint's), refusing unknown keys and values of the
        wrong type by name (a JSON "256", 256.0, null or "false" is not what it looks like)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected an object of config fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s): {', '.join(unknown)} (this version knows "
                              f"{', '.join(sorted(known))})")
        for f in fields(cls):
            if f.name in d:
                _check_type(f.name, d[f.name], type(f.default), source)
        return cls(**{**ABSENT, **d}).validated()

    def replace(self, **changes) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @property
    def pair_branches(self) -> tuple[str, ...]:
        """The branches that score pairs: ('fused',) in early fusion, else the enabled ones of ho, union."""
        if self.fusion == "early":
            return (FUSED.name,)
        return tuple(b.name for b in PAIR_BRANCHES if getattr(self, b.switch))

    @property
    def branches(self) -> tuple[Branch, ...]:
        """The branches built (:mod:`trainer.branches`): the global one if on, then the pair ones."""
        return ((GLOBAL,) if self.global_branch else ()) + tuple(BY_NAME[n] for n in self.pair_branches)

    def _trained(self, b: Branch) -> bool:
        """Whether the switchable branch ``b``'s loss trains something: the branch itself, or in
        early fusion (a pair branch's) the fused branch."""
        return getattr(self, b.switch) or (self.fusion == "early" and b is not GLOBAL)

    @property
    def active_losses(self) -> tuple[str, ...]:
        """Losses computed: those with a positive weight whose branch exists (global; mil, or ho
        under pair labels; union), and the feature loss where some branch has a CLIP embedding
        to be pulled towards."""
        return tuple(b.loss_under(self.supervision) for b in BRANCHES
                     if self._trained(b) and getattr(self, b.weight) > 0) + \
            tuple(k for k in ("feature", "contrast") if self.feature_targets and getattr(self, LOSS_WEIGHTS[k]) > 0)

    @property
    def loss_owners(self) -> dict[str, str]:
        """Class loss -> the branch whose logits it reads: its own, or in early fusion (a pair
        loss) the fused branch's."""
        early = self.fusion == "early"
        return {b.loss_under(self.supervision): FUSED.name if early and b is not GLOBAL else b.name
                for b in BRANCHES}

    @property
    def loss_targets(self) -> dict[str, str]:
        """Class loss -> what it learns from: 'global_score' or 'union_score' (CLIP's, cached),
        'image_labels' or 'pair_labels' (the cache's ground truth; :mod:`hoidata.pair_labels`)."""
        return {k: LOSS_TARGETS[self.supervision][k] for k in self.active_losses if k not in ("feature", "contrast")}

    @property
    def feature_targets(self) -> dict[str, str]:
        """Branch -> the CLIP embedding its feature loss pulls it towards: 'global' (the cached
        global embedding) for the global branch; 'union' (the union crop's) for every pair
        branch when the union level supervises the run; empty without the feature loss."""
        if self.w_feature <= 0 and self.w_contrast <= 0:
            return {}
        union_level = self._trained(UNION_BRANCH)
        return {b.name: b.feature for b in self.branches if b.feature == "global" or union_level}

    def validated(self) -> "TrainConfig":
        """Check choices, ranges and that every branch has a loss that trains it; return self."""
        check_fields(self, ConfigError)  # choices and bounds, declared with the fields
        if not (self.ho_branch or self.union_branch):
            raise ConfigError("no branch scores pairs: enable the human-object or the union branch "
                              "(--ho-branch / --union-branch)")
        if self.fusion == "early" and not (self.ho_branch and self.union_branch):
            raise ConfigError("early fusion combines the human-object and union branches: enable both, "
                              "or use --fusion late")
        # A branch without a loss would be scored at test time without ever learning.
        if self.global_branch and self.w_global == 0:
            raise ConfigError("the global branch is on but w_global is 0, so it would never learn; "
                              "pass --no-global-branch or --w-global > 0")
        if self.fusion == "early":
            if all(getattr(self, b.weight) == 0 for b in PAIR_BRANCHES):
                raise ConfigError("early fusion needs w_mil or w_union > 0 to train the fused pair scores")
        else:
            for b in PAIR_BRANCHES:
                if getattr(self, b.switch) and getattr(self, b.weight) == 0:
                    raise ConfigError(f"the {b.name} branch is on but {b.weight} is 0, so it would never learn; "
                                      f"pass --no-{b.name}-branch or --{b.weight.replace('_', '-')} > 0")
        return self


# Switches added after checkpoints were first written: a stored config without one was
# trained without it (whatever today's default), so it reads as off.
ABSENT = {"residual": False, "w_feature": 0.0, "w_contrast": 0.0, "supervision": "clip"}

def read_config_file(path) -> dict:
    """The fields a JSON or YAML file sets (``.yaml`` / ``.yml``: YAML), checked by name and
    type against :class:`TrainConfig`: a mapping of its field names to values, e.g. the
    ``config`` of a checkpoint's ``checkpoint.json``, or any part of it. ``hoi train --config``
    applies them over the defaults, and the command line's options over them."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a readable YAML file ({str(e).splitlines()[0]})") from None
    else:
        d = load_json(path, ConfigError, "training config")
    if d is None:
        d = {}  # an empty YAML file sets nothing
    TrainConfig.from_dict({**TrainConfig().to_dict(), **d} if isinstance(d, dict) else d, source=str(path))
    return d


def _check_type(name: str, value, kind: type, source: str) -> None:
    """Refuse a value whose JSON type is not the field's: bool for bools (not "false" or 0),
    int for ints (not 256.0 or "256"), int or float for floats, str for strings."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{source}: {name} is {value!r} ({type(value).__name__}); it must be "
                          f"{_KIND_NAMES.get(kind, kind.__name__)}")


_KIND_NAMES = {float: "a number", int: "an integer", bool: "a boolean (true or false)", str: "a string"}


def runtime_fields() -> set[str]:
    return {f.name for f in fields(TrainConfig) if f.metadata["runtime"]}
