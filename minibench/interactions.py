"""One person and the object they interact with: pose and placement for each HOI class.

:func:`group` returns the primitives of one interaction in local units (see
:mod:`minibench.figures`), the person facing +x. What makes a verb visible:

- ``ride``: seated on the bicycle / horse (hands on the handlebar or reins), standing on
  the skateboard with arms out;
- ``hold``: one hand on the object (in front of the chest; the handlebar of a bicycle
  being walked; the reins of a horse; an open umbrella overhead; a pulled suitcase);
- ``carry``: both arms around the object in front of the chest, lifted off the ground;
- ``throw``: the throwing arm raised behind the head, the object *still at the hand*
  (hard case against ``hold``: the object is near the hand in both);
- ``kick``: one leg swung forward, the ball at the toe;
- ``sit_on``, ``fly`` (a string from the raised hand to the kite), ``walk`` (a leash);
- ``no_interaction``: the object on the ground beside the person, sometimes within a
  hand's width (hard case), sometimes while the person gestures with an empty hand.

With probability ``p_extra`` a second object lies on the ground behind the person: one
more (person, object, ``no_interaction``) pair that shares the person's box.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import figures as F
from .labels import HOI, HUMAN, NUM_CLASSES, OBJECTS, TIER_WEIGHT, TIERS, VERBS


@dataclass(frozen=True)
class Group:
    """An interaction in local units: ``prims``; ``pairs`` [(ent_h, ent_o, hoi class)];
    ``labels`` {entity: object index}."""

    prims: tuple
    pairs: tuple
    labels: dict

    @cached_property
    def _extents(self) -> np.ndarray:
        return np.array([p.extent() for p in self.prims])

    def extent(self, ent=None) -> np.ndarray:
        """float64 [4] (xmin, ymin, xmax, ymax) of the prims of ``ent`` (all when None)."""
        e = self._extents if ent is None else self._extents[[p.ent == ent for p in self.prims]]
        return np.concatenate([e[:, :2].min(0), e[:, 2:].max(0)])


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _shoulder(hip, lean) -> np.ndarray:
    return np.asarray(hip, np.float64) + F.TORSO * np.array([np.sin(np.radians(lean)), np.cos(np.radians(lean))])


def _legs(rng, stride=None) -> dict:
    """Standing (or, with ``stride``, mid-step) legs as ``'ang'`` specs."""
    stride = rng.random() < 0.3 if stride is None else stride
    a = _u(rng, 14, 22) if stride else _u(rng, 0, 5)
    return {"far": ("ang", -a, -a - _u(rng, 0, 8)), "near": ("ang", a, a * 0.5)}


class _Stance:
    """A person standing on the ground: legs, lean, and where hip and shoulder end up, known
    before the arms are posed so that hands can reach for points given in ground coordinates."""

    def __init__(self, rng, lean=(-4, 4), stride=None, legs=None):
        self.rng, self.legs = rng, legs or _legs(rng, stride)
        self.lean = _u(rng, *lean)
        self.hip = F.standing_hip(self.legs)
        self.shoulder = _shoulder(self.hip, self.lean)

    def _down(self, sign) -> tuple:
        return ("ang", sign * _u(self.rng, 3, 15), sign * _u(self.rng, -5, 10))

    def person(self, look, far=None, near=None):
        """Prims and anchors; an arm left out hangs down."""
        arms = {"far": far or self._down(-1), "near": near or self._down(1)}
        return F.person(look, self.hip, self.lean, arms, self.legs)


def _attach(name, rng, anchor, target, rot=0.0, flip=False, layer=F.HELD, **state):
    """An object whose ``anchor`` lands on ``target`` after mirroring and rotating it."""
    prims, anchors = F.make_object(name, rng, **state)
    prims = F.moved(prims, rot=rot, flip=flip, layer=layer)
    return F.moved(prims, *(np.asarray(target) - F.transform(anchors[anchor][None], rot, flip)[0]))


def _on_ground(prims, x_edge, side, rot=0.0, flip=False) -> list:
    """Prims rotated, then set on y = 0 with their near edge at ``x_edge`` on ``side`` (+1 / -1)."""
    prims = F.moved(prims, rot=rot, flip=flip)
    e = np.array([p.extent() for p in prims])
    x0, x1, y0 = e[:, 0].min(), e[:, 2].max(), e[:, 1].min()
    return F.moved(prims, dx=(x_edge - x0) if side > 0 else (x_edge - x1), dy=-y0)


def _lying(name, rng) -> tuple[float, dict]:
    """How an object rests on the ground: rotation and builder state."""
    if name == "kite":
        return _u(rng, 80, 100), {}
    if name == "umbrella":
        return _u(rng, 85, 95), {"closed": rng.random() < 0.6}
    return 0.0, {}


# -- one function per verb: (rng, look, object name) -> prims (person 'h' + object 'o') --
# Hand targets stay within arm's reach (UPPER_ARM + FOREARM = 0.315 from the shoulder).

def _no_interaction(rng, look, obj):
    st = _Stance(rng)
    near = None
    if rng.random() < 0.25:  # an empty-handed gesture: the pose alone must not say "hold"
        near = ("ang", _u(rng, 40, 160), _u(rng, 60, 180))
    body, _ = st.person(look, near=near)
    e = np.array([p.extent() for p in body])
    side = 1 if rng.random() < 0.5 else -1
    gap = _u(rng, 0.02, 0.12) if rng.random() < 0.35 else _u(rng, 0.12, 0.6)  # close: the hard case
    rot, state = _lying(obj, rng)
    prims, _ = F.make_object(obj, rng, **state)
    edge = e[:, 2].max() + gap if side > 0 else e[:, 0].min() - gap
    return body + _on_ground(prims, edge, side, rot=rot, flip=rng.random() < 0.5)


def _hold(rng, look, obj):
    st = _Stance(rng, lean=(-4, 6), stride=False)
    sh = st.shoulder
    target = {  # where the hand goes
        "bicycle": lambda: (sh[0] + _u(rng, 0.1, 0.18), 0.56),     # walking it: hand on the handlebar
        "horse": lambda: (sh[0] + _u(rng, 0.16, 0.24), 0.86),      # leading it: its head at the hand
        "suitcase": lambda: (sh[0] - _u(rng, 0.1, 0.18), 0.58),    # pulling it by the extended handle
        "umbrella": lambda: sh + (_u(rng, 0.06, 0.14), _u(rng, 0.1, 0.2)),       # open, overhead
        "skateboard": lambda: sh + (_u(rng, 0.04, 0.1), _u(rng, -0.28, -0.24)),  # hanging at the side
    }.get(obj, lambda: sh + (_u(rng, 0.14, 0.22), _u(rng, -0.22, -0.1)))()      # small things: at the chest
    body, a = st.person(look, near=("ik", target))
    hand = a["hand_near"]
    if obj == "bicycle":
        return body + _attach("bicycle", rng, "grip", hand)
    if obj == "horse":
        return body + _attach("horse", rng, "mouth", hand + (0.03, 0.0), layer=F.BEHIND)
    if obj == "suitcase":
        return body + _attach("suitcase", rng, "handle", hand, layer=F.BEHIND, trolley=True)
    if obj == "umbrella":
        return body + _attach("umbrella", rng, "grip", hand, rot=_u(rng, -12, 12), layer=F.BEHIND)
    if obj == "skateboard":
        return body + _attach("skateboard", rng, "end", hand, rot=90.0)
    anchor, offset, rot, flip = {
        "sports_ball": ("centre", (0.07, 0.03), 0.0, False),
        "cup": ("handle", (0.0, 0.0), 0.0, True),
        "bottle": ("grip", (0.0, 0.0), _u(rng, -15, 15), False),
        "frisbee": ("rim", (0.0, 0.0), _u(rng, -25, 25), False),
        "kite": ("centre", (0.1, 0.02), _u(rng, -15, 15), False),
    }[obj]
    return body + _attach(obj, rng, anchor, hand + offset, rot=rot, flip=flip)


def _carry(rng, look, obj):
    st = _Stance(rng, lean=(-8, 2))
    sh = st.shoulder
    body, a = st.person(look, far=("ik", sh + (_u(rng, 0.17, 0.22), _u(rng, -0.22, -0.17))),
                        near=("ik", sh + (_u(rng, 0.2, 0.24), _u(rng, -0.18, -0.12))))
    centre = (a["hand_far"] + a["hand_near"]) / 2 + (0.05, 0.0)
    rot, state = {"skateboard": (_u(rng, -10, 30), {}),
                  "umbrella": (_u(rng, 35, 60), {"closed": True})}.get(obj, (0.0, {}))
    return body + _attach(obj, rng, "centre", centre, rot=rot, **state)


def _throw(rng, look, obj):
    st = _Stance(rng, lean=(-8, 2), stride=True)
    body, a = st.person(look, near=("ik", st.shoulder + (_u(rng, -0.14, -0.04), _u(rng, 0.2, 0.27))),  # wound up
                        far=("ang", _u(rng, 60, 95), _u(rng, 60, 100)))
    hand = a["hand_near"]
    if obj == "bottle":
        return body + _attach("bottle", rng, "grip", hand, rot=_u(rng, 20, 60))
    offset = {"sports_ball": (_u(rng, -0.05, 0.0), _u(rng, 0.06, 0.1)), "cup": (-0.02, 0.08),
              "frisbee": (_u(rng, -0.14, -0.1), _u(rng, 0.0, 0.04))}[obj]
    return body + _attach(obj, rng, "centre", hand + offset, rot=_u(rng, -20, 20) if obj == "frisbee" else 0.0)


def _kick(rng, look, obj):
    legs = {"far": ("ang", _u(rng, -6, 2), _u(rng, -8, 0)), "near": ("ang", _u(rng, 35, 60), _u(rng, 50, 80))}
    st = _Stance(rng, lean=(-12, -3), legs=legs)
    body, a = st.person(look, far=("ang", _u(rng, 20, 50), _u(rng, 10, 40)),
                        near=("ang", _u(rng, -50, -20), _u(rng, -40, -10)))
    centre = a["toe_near"] + (_u(rng, 0.06, 0.1), _u(rng, -0.02, 0.04))
    return body + _attach("sports_ball", rng, "centre", centre, layer=F.FRONT)


def _ride(rng, look, obj):
    prims, anchors = F.make_object(obj, rng)
    if obj == "skateboard":  # standing on the board, arms out for balance
        hip, lean = (0.0, _u(rng, 0.5, 0.55)), _u(rng, -5, 10)
        legs = {"far": ("ik", (-0.12, 0.11)), "near": ("ik", (0.12, 0.11))}
        arms = {"far": ("ang", _u(rng, -80, -50), _u(rng, -95, -60)), "near": ("ang", _u(rng, 50, 80), _u(rng, 60, 95))}
    elif obj == "bicycle":  # on the saddle, feet on the pedals, hands on the handlebar
        hip, lean = anchors["saddle"] + (0.0, 0.02), _u(rng, 15, 25)
        phi = _u(rng, 0, 2 * np.pi)
        crank = 0.07 * np.array([np.cos(phi), np.sin(phi)])
        legs = {"near": ("ik", anchors["pedal"] + crank + (-0.02, 0.03)),
                "far": ("ik", anchors["pedal"] - crank + (-0.02, 0.03))}
        arms = {"near": ("ik", anchors["grip"]), "far": ("ik", anchors["grip"] - (0.02, 0.0))}
    else:  # horse: astride its back, legs hanging, hands on the reins
        hip, lean = anchors["back"] + (0.0, 0.03), _u(rng, 0, 12)
        sh = _shoulder(hip, lean)
        legs = {"near": ("ang", _u(rng, 25, 45), _u(rng, -10, 10)), "far": ("ang", _u(rng, 20, 40), _u(rng, -10, 5))}
        arms = {"near": ("ik", sh + (_u(rng, 0.22, 0.28), _u(rng, -0.15, -0.05))),
                "far": ("ik", sh + (_u(rng, 0.2, 0.26), _u(rng, -0.15, -0.05)))}
    body, a = F.person(look, hip, lean, arms, legs)
    if obj == "horse":
        prims = prims + [F.Prim("line", np.stack([a["hand_near"], anchors["mouth"]]), F.DARK, 0.012, None, F.NEAR)]
    return body + prims


def _sit_on(rng, look, obj):
    prims, anchors = F.make_object("chair", rng)
    hip = anchors["seat"] + (-0.02, 0.04)
    foot_x = _u(rng, 0.24, 0.32)
    body, _ = F.person(look, hip, _u(rng, -8, 4),
                       arms={"far": ("ik", hip + (0.2, 0.06)), "near": ("ik", hip + (_u(rng, 0.18, 0.24), 0.05))},
                       legs={"far": ("ik", (foot_x - 0.03, 0.03)), "near": ("ik", (foot_x, 0.03))})
    return body + prims


def _fly(rng, look, obj):
    st = _Stance(rng, lean=(-8, 2))
    body, a = st.person(look, near=("ik", st.shoulder + (_u(rng, 0.12, 0.2), _u(rng, 0.15, 0.24))))
    hand = a["hand_near"]
    bridle = hand + (_u(rng, 0.3, 0.6), _u(rng, 0.35, 0.6))
    string = F.Prim("line", np.stack([hand, bridle]), (0.15, 0.15, 0.15), 0.01, None, F.BEHIND)
    return body + [string] + _attach("kite", rng, "bridle", bridle, rot=_u(rng, -25, 10), layer=F.BEHIND)


def _walk(rng, look, obj):
    st = _Stance(rng, stride=True)
    body, a = st.person(look, near=("ik", st.shoulder + (_u(rng, 0.1, 0.17), _u(rng, -0.25, -0.2))))
    hand = a["hand_near"]
    prims, anchors = F.make_object("dog", rng)
    dx = hand[0] + _u(rng, 0.25, 0.45) - anchors["collar"][0]
    leash = F.Prim("line", np.stack([hand, anchors["collar"] + (dx, 0.0)]), (0.8, 0.1, 0.1), 0.012, None, F.NEAR)
    return body + F.moved(prims, dx=dx, layer=F.NEAR) + [leash]


_VERB = {"carry": _carry, "fly": _fly, "hold": _hold, "kick": _kick, "no_interaction": _no_interaction,
         "ride": _ride, "sit_on": _sit_on, "throw": _throw, "walk": _walk}
_NO_INTERACTION_EXTRA = [c for c in range(NUM_CLASSES)
                         if VERBS[HOI[c][0]] == "no_interaction" and TIERS[c] != "rare"]


def group(hoi_class: int, rng, p_extra: float = 0.15) -> Group:
    """The interaction ``hoi_class`` (an index into :data:`minibench.labels.HOI`)."""
    v, o = HOI[hoi_class]
    look = F.Look.sample(rng)
    prims = _VERB[VERBS[v]](rng, look, OBJECTS[o])
    pairs, labels = [("h", "o", hoi_class)], {"h": HUMAN, "o": o}
    if rng.random() < p_extra:
        # Rare classes stay rare: the extra object is drawn from the non-rare no_interaction classes.
        cands = [c for c in _NO_INTERACTION_EXTRA if HOI[c][1] != o]
        w = np.array([TIER_WEIGHT[TIERS[c]] for c in cands])
        c = cands[int(rng.choice(len(cands), p=w / w.sum()))]
        rot, state = _lying(OBJECTS[HOI[c][1]], rng)
        extra, _ = F.make_object(OBJECTS[HOI[c][1]], rng, **state)
        x_edge = min(p.extent()[0] for p in prims) - _u(rng, 0.05, 0.4)
        prims += F.moved(_on_ground(extra, x_edge, -1, rot=rot, flip=rng.random() < 0.5), ent="x", layer=F.BEHIND)
        pairs.append(("h", "x", c))
        labels["x"] = HOI[c][1]
    return Group(tuple(prims), tuple(pairs), labels)
