"""Geometry of people and objects: vector primitives in a person-centred frame.

Everything here is drawn in *local units*: x points the way the person faces, y points
up, the unit is the person's height H and the origin is the ground under the person's
feet. :mod:`minibench.world` scales, mirrors and places these primitives in an image.

A primitive (:class:`Prim`) belongs to one entity of its group (``'h'`` the person,
``'o'`` the object, ``'x'`` an extra object lying nearby, ``None`` for strings and
leashes that belong to no box) and to a drawing layer, so that a rider's far leg goes
behind the horse and the near leg in front of it.

Objects have distinct colours *and* shapes, and none is smaller than ~0.16 H: a union
crop resized to 64 px still shows it at 10-15 px or more (the DESIGN's lesson that small
objects are what a small CLIP fails on).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Drawing layers, back to front.
BEHIND, FAR, MID, BODY, HELD, NEAR, FRONT = range(7)

# Base colours (RGB in 0..1) of the objects; each instance is jittered a little.
OBJECT_COLOUR = {
    "bicycle": (0.10, 0.30, 0.95), "bottle": (0.05, 0.55, 0.20), "chair": (0.85, 0.10, 0.10),
    "cup": (0.97, 0.97, 0.92), "dog": (0.33, 0.33, 0.36), "frisbee": (0.60, 0.95, 0.10),
    "horse": (0.55, 0.30, 0.12), "kite": (0.90, 0.10, 0.65), "skateboard": (0.12, 0.10, 0.10),
    "sports_ball": (1.00, 0.50, 0.00), "suitcase": (0.00, 0.60, 0.60), "umbrella": (0.50, 0.15, 0.75),
}
DARK = (0.08, 0.08, 0.08)
SKIN = ((0.96, 0.80, 0.69), (0.88, 0.67, 0.50), (0.72, 0.50, 0.34), (0.48, 0.32, 0.22), (0.33, 0.22, 0.15))
HAIR = ((0.10, 0.07, 0.05), (0.35, 0.20, 0.08), (0.75, 0.60, 0.30), (0.55, 0.55, 0.55))

# Person proportions (units of H).
TORSO, NECK = 0.31, 0.115
THIGH, SHIN, UPPER_ARM, FOREARM = 0.24, 0.235, 0.16, 0.155
HEAD_R, TORSO_W, ARM_W, LEG_W = 0.075, 0.12, 0.055, 0.065


@dataclass(frozen=True)
class Prim:
    """One vector primitive in local units.

    kind: ``poly`` (filled polygon), ``limb`` (thick segment with round ends), ``circle``
    (``pts`` [1, 2] centre, ``width`` = radius), ``ring`` (closed outline of ``pts``),
    ``line`` (thin open polyline, e.g. a kite string). ``pts``: float64 [k, 2].
    """

    kind: str
    pts: np.ndarray
    colour: tuple
    width: float = 0.0
    ent: str | None = None
    layer: int = MID
    outline: bool = False

    def extent(self) -> np.ndarray:
        """float64 [4]: (xmin, ymin, xmax, ymax) of what gets painted, in local units."""
        pad = {"limb": self.width / 2, "circle": self.width, "ring": self.width / 2}.get(self.kind, 0.0)
        return np.concatenate([self.pts.min(0) - pad, self.pts.max(0) + pad])


def transform(pts: np.ndarray, rot=0.0, flip=False, scale=1.0) -> np.ndarray:
    """float64 [k, 2] points mirrored (x -> -x), scaled, then rotated by ``rot`` degrees
    counter-clockwise about the origin."""
    c, s = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    return pts @ (np.array([[c, s], [-s, c]]) * scale * np.array([[-1.0 if flip else 1.0], [1.0]]))


def moved(prims, dx=0.0, dy=0.0, rot=0.0, flip=False, scale=1.0, ent=None, layer=None) -> list[Prim]:
    """Prims :func:`transform`-ed, then shifted by (dx, dy); optionally re-tagged with
    ``ent`` and ``layer``."""
    return [replace(p, pts=transform(p.pts, rot, flip, scale) + (dx, dy), width=p.width * scale,
                    ent=p.ent if ent is None else ent, layer=p.layer if layer is None else layer) for p in prims]


def ellipse(cx, cy, rx, ry, n=20, a0=0.0, a1=360.0) -> np.ndarray:
    """float64 [n, 2]: points on an axis-aligned ellipse (an arc from a0 to a1 degrees)."""
    t = np.radians(np.linspace(a0, a1, n, endpoint=(a1 - a0) % 360 != 0))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _p(*xy) -> np.ndarray:
    return np.array(xy, dtype=np.float64).reshape(-1, 2)


def jitter(colour, rng, amount=0.06) -> tuple:
    return tuple(np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0, 1))


# -- the person -----------------------------------------------------------------------

def _seg(p, angle_deg, length) -> np.ndarray:
    """End of a segment from p at ``angle_deg`` from straight down (positive = forward)."""
    a = np.radians(angle_deg)
    return np.asarray(p, np.float64) + length * np.array([np.sin(a), -np.cos(a)])


def reach(root, target, l1, l2, side) -> tuple[np.ndarray, np.ndarray]:
    """Two-link inverse kinematics: (middle joint, end) reaching from ``root`` to ``target``.

    ``side`` +1 bends the middle joint to the left of root->target (knees forward for a
    leg hanging down), -1 to the right (elbows down for an arm reaching forward). A
    target out of reach leaves the limb straight, pointing at it.
    """
    root, target = np.asarray(root, np.float64), np.asarray(target, np.float64)
    d = target - root
    dist = float(np.hypot(*d))
    u = d / max(dist, 1e-9)
    if dist >= l1 + l2:
        return root + u * l1, root + u * (l1 + l2)
    dist = max(dist, abs(l1 - l2) + 1e-6)
    a = (l1 ** 2 - l2 ** 2 + dist ** 2) / (2 * dist)
    h = np.sqrt(max(l1 ** 2 - a ** 2, 0.0))
    mid = root + u * a + side * h * np.array([-u[1], u[0]])
    return mid, root + u * dist


@dataclass
class Look:
    """Colours of one person (RGB 0..1)."""

    skin: tuple
    hair: tuple
    shirt: tuple
    pants: tuple

    @classmethod
    def sample(cls, rng) -> "Look":
        return cls(skin=SKIN[rng.integers(len(SKIN))], hair=HAIR[rng.integers(len(HAIR))],
                   shirt=tuple(rng.uniform(0.1, 0.9, 3)), pants=tuple(rng.uniform(0.05, 0.45, 3)))


def person(look: Look, hip, lean, arms: dict, legs: dict) -> tuple[list[Prim], dict]:
    """A person facing +x: prims (entity ``'h'``) and anchors (hands, feet, shoulder, head).

    ``arms`` / ``legs``: ``{'far': spec, 'near': spec}``; a spec is ``('ang', a1, a2)``
    (absolute angles of the two segments from straight down, positive forward) or
    ``('ik', target_xy)`` (reach for that point: elbows bend down, knees forward).
    """
    hip = np.asarray(hip, np.float64)
    up = np.array([np.sin(np.radians(lean)), np.cos(np.radians(lean))])
    shoulder = hip + TORSO * up
    head = shoulder + NECK * up
    shade = lambda c, k: tuple(np.asarray(c) * k)  # noqa: E731  far limbs are darker
    prims, anchors = [], {"hip": hip, "shoulder": shoulder, "head": head}

    def limb_chain(spec, root, l1, l2, side):
        if spec[0] == "ik":
            return reach(root, spec[1], l1, l2, side)
        mid = _seg(root, spec[1], l1)
        return mid, _seg(mid, spec[2], l2)

    for which, layer, k in (("far", FAR, 0.75), ("near", NEAR, 1.0)):
        knee, foot = limb_chain(legs[which], hip, THIGH, SHIN, +1)
        prims += [Prim("limb", np.stack([hip, knee]), shade(look.pants, k), LEG_W, "h", layer),
                  Prim("limb", np.stack([knee, foot]), shade(look.pants, k), LEG_W * 0.9, "h", layer),
                  Prim("limb", np.stack([foot, foot + (0.07, 0.0)]), DARK, 0.05, "h", layer)]
        elbow, hand = limb_chain(arms[which], shoulder, UPPER_ARM, FOREARM, -1)
        prims += [Prim("limb", np.stack([shoulder, elbow]), shade(look.shirt, k), ARM_W, "h", layer),
                  Prim("limb", np.stack([elbow, hand]), shade(look.skin, k), ARM_W * 0.85, "h", layer),
                  Prim("circle", hand[None], shade(look.skin, k), 0.032, "h", layer)]
        anchors[f"foot_{which}"], anchors[f"hand_{which}"] = foot, hand
        anchors[f"toe_{which}"] = foot + (0.08, 0.0)
    prims += [Prim("limb", np.stack([hip, shoulder]), look.shirt, TORSO_W, "h", BODY),
              Prim("limb", np.stack([shoulder, head]), look.skin, 0.045, "h", BODY),
              Prim("circle", head[None], look.skin, HEAD_R, "h", BODY),
              # hair: a cap over the back of the head, so facing shows even at 64 px
              Prim("poly", ellipse(*(head + up * 0.01 - (0.012, 0)), HEAD_R * 1.05, HEAD_R * 0.95, 12, 20, 200),
                   look.hair, 0.0, "h", BODY)]
    return prims, anchors


def standing_hip(legs: dict) -> np.ndarray:
    """Hip position at which the lower foot of ``legs`` (two ``'ang'`` specs) rests on y = 0."""
    drop = max(THIGH * np.cos(np.radians(s[1])) + SHIN * np.cos(np.radians(s[2])) for s in legs.values())
    return np.array([0.0, drop + LEG_W * 0.45])


# -- objects: each returns prims (entity 'o', layer MID) and named anchors -------------

def _outlined(kind, pts, colour, width=0.0) -> Prim:
    return Prim(kind, pts, colour, width, "o", MID, outline=True)


def bicycle(rng, colour):
    r, xb, xf = 0.16, -0.28, 0.28
    bb, seat, head = _p(0.0, 0.17), _p(-0.08, 0.46), _p(0.20, 0.44)
    hub_b, hub_f = _p(xb, r), _p(xf, r)
    prims = [Prim("ring", ellipse(x, r, r, r, 24), DARK, 0.035, "o") for x in (xb, xf)]
    prims += [Prim("limb", np.concatenate([a, b]), colour, 0.03, "o") for a, b in
              ((hub_b, bb), (bb, seat), (seat, hub_b), (seat, head), (bb, head), (head, hub_f),
               (head, _p(0.22, 0.55)), (_p(0.22, 0.55), _p(0.16, 0.56)))]
    prims.append(Prim("limb", _p(-0.13, 0.48, -0.03, 0.48), DARK, 0.035, "o"))
    return prims, {"saddle": _p(-0.08, 0.50)[0], "grip": _p(0.16, 0.56)[0], "pedal": bb[0]}


def horse(rng, colour):
    dark = tuple(np.asarray(colour) * 0.6)
    prims = [Prim("limb", _p(x, 0.55, x + dx, 0.0), colour if x > -0.25 and x < 0.25 else dark, 0.065, "o")
             for x, dx in ((-0.30, -0.02), (-0.22, 0.03), (0.20, -0.02), (0.28, 0.03))]
    prims += [Prim("limb", _p(-0.36, 0.66, -0.47, 0.42), dark, 0.05, "o"),
              _outlined("poly", ellipse(0.0, 0.60, 0.38, 0.15, 24), colour),
              _outlined("poly", _p(0.22, 0.56, 0.36, 0.62, 0.47, 0.93, 0.37, 0.95), colour),
              _outlined("poly", ellipse(0.47, 0.88, 0.11, 0.055, 16), colour),
              Prim("limb", _p(0.30, 0.72, 0.40, 0.96), dark, 0.035, "o")]
    return prims, {"back": _p(-0.04, 0.76)[0], "mouth": _p(0.56, 0.86)[0]}


def skateboard(rng, colour):
    prims = [Prim("circle", _p(x, 0.028), (0.95, 0.85, 0.10), 0.028, "o") for x in (-0.15, 0.15)]
    prims.append(_outlined("limb", _p(-0.21, 0.065, 0.21, 0.065), colour, 0.04))
    return prims, {"end": _p(0.21, 0.065)[0], "centre": _p(0.0, 0.05)[0]}


def sports_ball(rng, colour):
    r = 0.10
    prims = [_outlined("circle", _p(0.0, r), colour, r),
             Prim("line", ellipse(-0.13, r, 0.11, 0.075, 8, -50, 50), DARK, 0.012, "o"),
             Prim("line", ellipse(0.13, r, 0.11, 0.075, 8, 130, 230), DARK, 0.012, "o")]
    return prims, {"centre": _p(0.0, r)[0]}


def cup(rng, colour):
    prims = [Prim("ring", ellipse(0.085, 0.09, 0.045, 0.045, 12), DARK, 0.02, "o"),
             _outlined("poly", _p(-0.06, 0.0, 0.06, 0.0, 0.075, 0.17, -0.075, 0.17), colour),
             Prim("poly", _p(-0.066, 0.07, 0.066, 0.07, 0.07, 0.11, -0.07, 0.11), (0.85, 0.1, 0.1), 0.0, "o")]
    return prims, {"handle": _p(0.09, 0.09)[0], "centre": _p(0.0, 0.085)[0]}


def bottle(rng, colour):
    prims = [_outlined("poly", rect(-0.045, 0.0, 0.045, 0.20), colour),
             _outlined("poly", _p(-0.045, 0.20, 0.045, 0.20, 0.02, 0.26, -0.02, 0.26), colour),
             Prim("poly", rect(-0.025, 0.26, 0.025, 0.29), (0.9, 0.9, 0.9), 0.0, "o"),
             Prim("poly", rect(-0.045, 0.07, 0.045, 0.13), (0.95, 0.95, 0.85), 0.0, "o")]
    return prims, {"grip": _p(0.0, 0.14)[0], "centre": _p(0.0, 0.14)[0]}


def frisbee(rng, colour):
    prims = [_outlined("poly", ellipse(0.0, 0.0, 0.14, 0.045, 20), colour),
             Prim("ring", ellipse(0.0, 0.005, 0.08, 0.022, 14), tuple(np.asarray(colour) * 0.6), 0.012, "o")]
    return prims, {"rim": _p(-0.13, 0.0)[0], "centre": _p(0.0, 0.0)[0]}


def kite(rng, colour):
    top, right, bottom, left, mid = _p(0, 0.2), _p(0.14, 0.05), _p(0, -0.2), _p(-0.14, 0.05), _p(0, 0.05)
    tail = np.stack([np.full(6, 0.0) + np.array([0, 0.03, -0.03, 0.03, -0.03, 0.02]),
                     -0.2 - np.linspace(0, 0.2, 6)], 1)
    prims = [Prim("line", tail, DARK, 0.012, "o"),
             _outlined("poly", np.concatenate([top, left, bottom]), colour),
             _outlined("poly", np.concatenate([top, right, bottom]), (1.0, 0.85, 0.1)),
             Prim("line", np.concatenate([top, bottom]), DARK, 0.012, "o"),
             Prim("line", np.concatenate([left, right]), DARK, 0.012, "o")]
    prims += [Prim("poly", _p(x - 0.025, y - 0.015, x + 0.025, y + 0.015, x + 0.025, y - 0.015, x - 0.025, y + 0.015),
                   (1.0, 0.85, 0.1), 0.0, "o") for x, y in tail[2::2]]
    return prims, {"bridle": mid[0], "centre": _p(0.0, 0.0)[0]}


def umbrella(rng, colour, closed=False):
    """Origin at the grip; the shaft goes up +y."""
    shaft = [Prim("limb", _p(0.0, 0.0, 0.0, 0.44), (0.25, 0.25, 0.25), 0.02, "o"),
             Prim("line", ellipse(-0.03, 0.0, 0.03, 0.03, 7, 180, 360), (0.25, 0.25, 0.25), 0.02, "o")]
    if closed:
        canopy = [_outlined("poly", _p(-0.045, 0.12, 0.045, 0.12, 0.0, 0.52), colour)]
    else:
        scallop = np.concatenate([ellipse(x, 0.40, 0.055, 0.03, 5, 180, 360)[::-1] for x in (0.275, 0.165, 0.055,
                                                                                            -0.055, -0.165, -0.275)])
        canopy = [_outlined("poly", np.concatenate([ellipse(0.0, 0.40, 0.33, 0.18, 18, 0, 180), scallop]), colour)]
    return shaft + canopy, {"grip": _p(0.0, 0.0)[0], "centre": _p(0.0, 0.3)[0]}


def suitcase(rng, colour, trolley=False):
    prims = [Prim("circle", _p(x, 0.02), DARK, 0.02, "o") for x in (-0.11, 0.11)]
    if trolley:  # telescoping handle pulled out: what a person who pulls it holds
        prims += [Prim("limb", _p(x, 0.26, x, 0.52), (0.6, 0.6, 0.6), 0.02, "o") for x in (-0.05, 0.05)]
        prims.append(Prim("limb", _p(-0.06, 0.53, 0.06, 0.53), DARK, 0.03, "o"))
    else:
        prims.append(Prim("ring", _p(-0.05, 0.25, -0.05, 0.31, 0.05, 0.31, 0.05, 0.25), DARK, 0.02, "o"))
    prims += [_outlined("poly", rect(-0.15, 0.03, 0.15, 0.26), colour),
              Prim("poly", rect(-0.08, 0.03, -0.06, 0.26), tuple(np.asarray(colour) * 0.55), 0.0, "o"),
              Prim("poly", rect(0.06, 0.03, 0.08, 0.26), tuple(np.asarray(colour) * 0.55), 0.0, "o")]
    return prims, {"handle": _p(0.0, 0.53 if trolley else 0.30)[0], "centre": _p(0.0, 0.15)[0]}


def dog(rng, colour):
    dark = tuple(np.asarray(colour) * 0.6)
    prims = [Prim("limb", _p(x, 0.18, x + dx, 0.0), c, 0.04, "o")
             for x, dx, c in ((-0.12, -0.01, dark), (0.10, 0.01, dark), (-0.09, 0.02, colour), (0.13, 0.02, colour))]
    prims += [Prim("limb", _p(-0.17, 0.22, -0.24, 0.32), colour, 0.03, "o"),
              _outlined("poly", ellipse(0.0, 0.2, 0.18, 0.07, 18), colour),
              _outlined("circle", _p(0.2, 0.3), colour, 0.065),
              _outlined("poly", _p(0.22, 0.27, 0.31, 0.265, 0.31, 0.3, 0.22, 0.33), colour),
              Prim("poly", _p(0.16, 0.34, 0.2, 0.37, 0.15, 0.27), dark, 0.0, "o"),
              Prim("limb", _p(0.14, 0.23, 0.16, 0.31), (0.9, 0.1, 0.1), 0.025, "o")]
    return prims, {"collar": _p(0.15, 0.27)[0], "centre": _p(0.0, 0.2)[0]}


def chair(rng, colour):
    dark = tuple(np.asarray(colour) * 0.6)
    prims = [Prim("limb", _p(x, 0.27, x, 0.0), dark if k % 2 else colour, 0.03, "o")
             for k, x in enumerate((-0.12, -0.09, 0.12, 0.15))]
    prims += [_outlined("poly", rect(-0.15, 0.26, 0.16, 0.31), colour),
              _outlined("poly", rect(-0.15, 0.26, -0.11, 0.62), colour),
              Prim("limb", _p(-0.13, 0.42, -0.13, 0.56), dark, 0.025, "o")]
    return prims, {"seat": _p(0.0, 0.31)[0], "centre": _p(0.0, 0.31)[0]}


def make_object(name: str, rng, **state) -> tuple[list[Prim], dict]:
    """Prims (entity ``'o'``, layer MID) and anchors of one object instance, colour jittered."""
    return _BUILDERS[name](rng, jitter(OBJECT_COLOUR[name], rng), **state)


_BUILDERS = {"bicycle": bicycle, "bottle": bottle, "chair": chair, "cup": cup, "dog": dog, "frisbee": frisbee,
             "horse": horse, "kite": kite, "skateboard": skateboard, "sports_ball": sports_ball,
             "suitcase": suitcase, "umbrella": umbrella}
