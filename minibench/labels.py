"""The minibench label space: 13 objects (person included), 9 verbs, 38 HOI classes.

Names follow HICO-DET (``sports_ball``, ``sit_on``, ``no_interaction``) so that the COCO
maps can be taken from HICO-DET's label space instead of being typed again.

Every class has a *tier* that sets how often the renderer draws it in the train and
test splits: ``common`` (weight 1), ``medium`` (0.35) or ``rare`` (0.025). With 2,000 train
images (~4,900 pairs) that gives about 210-350 / 70-150 / 1-10 training pairs per class,
so ``RARE_THRESHOLD = 15`` splits the classes into Rare and Non-rare the way HICO-DET's
threshold of 10 does (9 of 38 Rare, about HICO-DET's quarter). The actual ``train_counts`` are counted on
the rendered train split by :mod:`minibench.build`, never assumed.
"""

from __future__ import annotations

import numpy as np

from hoidata.labelspace import SCHEMA, LabelSpace, hico_det

NAME = "minibench"
RARE_THRESHOLD = 15
TIER_WEIGHT = {"common": 1.0, "medium": 0.35, "rare": 0.025}

OBJECTS = ("bicycle", "bottle", "chair", "cup", "dog", "frisbee", "horse", "kite", "person",
           "skateboard", "sports_ball", "suitcase", "umbrella")
VERBS = ("carry", "fly", "hold", "kick", "no_interaction", "ride", "sit_on", "throw", "walk")
HUMAN = OBJECTS.index("person")

# (verb, object, tier), in class order: by object, then by verb (HICO-DET's order).
_CLASSES = (
    ("hold", "bicycle", "medium"), ("no_interaction", "bicycle", "medium"), ("ride", "bicycle", "common"),
    ("hold", "bottle", "common"), ("no_interaction", "bottle", "medium"), ("throw", "bottle", "rare"),
    ("carry", "chair", "rare"), ("no_interaction", "chair", "medium"), ("sit_on", "chair", "common"),
    ("hold", "cup", "common"), ("no_interaction", "cup", "medium"), ("throw", "cup", "rare"),
    ("carry", "dog", "rare"), ("no_interaction", "dog", "medium"), ("walk", "dog", "common"),
    ("hold", "frisbee", "medium"), ("no_interaction", "frisbee", "rare"), ("throw", "frisbee", "common"),
    ("hold", "horse", "medium"), ("no_interaction", "horse", "medium"), ("ride", "horse", "common"),
    ("fly", "kite", "common"), ("hold", "kite", "rare"), ("no_interaction", "kite", "medium"),
    ("carry", "skateboard", "medium"), ("hold", "skateboard", "rare"), ("no_interaction", "skateboard", "rare"),
    ("ride", "skateboard", "common"),
    ("hold", "sports_ball", "medium"), ("kick", "sports_ball", "common"),
    ("no_interaction", "sports_ball", "common"), ("throw", "sports_ball", "common"),
    ("carry", "suitcase", "common"), ("hold", "suitcase", "medium"), ("no_interaction", "suitcase", "medium"),
    ("carry", "umbrella", "rare"), ("hold", "umbrella", "common"), ("no_interaction", "umbrella", "medium"),
)
HOI = tuple((VERBS.index(v), OBJECTS.index(o)) for v, o, _ in _CLASSES)
TIERS = tuple(t for _, _, t in _CLASSES)
NUM_CLASSES = len(HOI)

_GERUND = {"carry": "carrying", "fly": "flying", "hold": "holding", "kick": "kicking", "ride": "riding",
           "sit_on": "sitting on", "throw": "throwing", "walk": "walking"}


def _with_article(obj: str) -> str:
    name = obj.replace("_", " ")
    return ("an " if name[0] in "aeiou" else "a ") + name


def prompt(verb: str, obj: str) -> str:
    """The CLIP prompt (and web caption) of one class, e.g. 'a photo of a person riding a bicycle'."""
    if verb == "no_interaction":
        return f"a photo of a person and {_with_article(obj)}"
    return f"a photo of a person {_GERUND[verb]} {_with_article(obj)}"


PROMPTS = tuple(prompt(VERBS[v], OBJECTS[o]) for v, o in HOI)


def class_weights() -> np.ndarray:
    """float64 [C]: relative frequency of each class in the train and test splits."""
    return np.array([TIER_WEIGHT[t] for t in TIERS])


def _coco_maps() -> tuple[list[int], dict[int, int]]:
    """COCO-80 and COCO-91 maps to our objects, derived from HICO-DET's (same object names)."""
    hico = hico_det()
    ours = {hico.objects.index(name): k for k, name in enumerate(OBJECTS)}
    coco80 = [ours.get(o, -1) for o in hico.coco80_to_object]
    coco91 = {cid: ours[o] for cid, o in hico.coco91_to_object.items() if o in ours}
    return coco80, coco91


# Zero-shot splits of the same kinds as HICO-DET's (shared/hico/zero_shot_splits.json), at
# HICO-DET's proportions (120 of 600 compositions = 20%; 12 of 80 objects; 20 of 117 verbs):
# RF-UC and NF-UC hold out the 8 rarest / 8 most frequent classes by train pairs (HICO-DET's
# RF-UC takes 120 rare classes, its NF-UC the 120 most frequent non-rare ones); UO holds out
# two objects whose verbs all occur with other objects (so a verb stays known); UV holds out
# one verb that goes with several objects. Fixed before any model was trained on them.
UNSEEN_COMPOSITIONS = 8
UNSEEN_OBJECTS = ("frisbee", "suitcase")
UNSEEN_VERBS = ("throw",)


def zero_shot_splits(train_counts) -> dict:
    """{name: {"setting", "unseen": [class, ...]}} for RF-UC, NF-UC, UO and UV (see above)."""
    counts = np.asarray(train_counts, np.int64)
    by_count = np.lexsort((np.arange(NUM_CLASSES), counts))           # rarest first, ties by class index
    head = np.lexsort((np.arange(NUM_CLASSES), -counts))              # most frequent first
    obj = {OBJECTS.index(o) for o in UNSEEN_OBJECTS}
    verb = {VERBS.index(v) for v in UNSEEN_VERBS}
    return {
        "rare_first": {"setting": "RF-UC", "unseen": sorted(int(c) for c in by_count[:UNSEEN_COMPOSITIONS])},
        "non_rare_first": {"setting": "NF-UC", "unseen": sorted(int(c) for c in head[:UNSEEN_COMPOSITIONS])},
        "unseen_object": {"setting": "UO", "unseen": [c for c, (_, o) in enumerate(HOI) if o in obj]},
        "unseen_verb": {"setting": "UV", "unseen": [c for c, (v, _) in enumerate(HOI) if v in verb]},
    }


def labelspace(train_counts) -> LabelSpace:
    """The label space, with ``train_counts`` (int [C], pairs per class in the train split)
    and the four zero-shot splits (:func:`zero_shot_splits`)."""
    counts = [int(c) for c in train_counts]
    if len(counts) != NUM_CLASSES:
        raise ValueError(f"train_counts has {len(counts)} entries for {NUM_CLASSES} classes")
    coco80, coco91 = _coco_maps()
    return LabelSpace.from_dict({
        "schema": SCHEMA, "name": NAME, "objects": list(OBJECTS), "verbs": list(VERBS),
        "hoi": [list(p) for p in HOI], "human": HUMAN, "train_counts": counts,
        "rare_threshold": RARE_THRESHOLD, "prompts": list(PROMPTS),
        "zero_shot_splits": zero_shot_splits(counts),
        "coco80_to_object": coco80, "coco91_to_object": {str(k): v for k, v in coco91.items()},
    }, source=NAME)
