"""What a branch of the student is, in one table: the heads, the losses, the validation and
the ablation grid all read it.

A branch maps what it reads of the adapted map to an embedding in CLIP's joint space,
scored against the text embeddings::

    branch   reads (in its head's input order)          built by        class loss (weight)
    global   the map's mean over the grid                 global_branch   global (w_global)
    ho       RoI(human), RoI(object), their layout        ho_branch       mil, or ho per pair (w_mil)
    union    RoI(union)                                   union_branch    union (w_union)
    fused    RoI(human), RoI(object), layout, RoI(union)  fusion=early    the ho and union losses

Each box is pooled from the features of one supervision level (:data:`BOX_LEVEL`): the
human and object boxes from the global level's (the MIL loss trains them against the
global CLIP scores), the union box from the union level's. What a class loss learns from
depends on the supervision (:data:`LOSS_TARGETS`).
"""

from __future__ import annotations

from dataclasses import dataclass

# Boxes of Batch.grid_boxes by name: their column, and the level whose features pool them.
BOX_COLUMN = {"human": 0, "object": 1, "union": 2}
BOX_LEVEL = {"human": "global", "object": "global", "union": "union"}
MEAN, LAYOUT = "mean", "layout"  # the other inputs: the map's mean; the human and object boxes' layout


@dataclass(frozen=True)
class Branch:
    name: str                  # the key of its head, embedding and logits
    inputs: tuple[str, ...]    # what its head reads, concatenated in this order: boxes, MEAN, LAYOUT
    switch: str                # the TrainConfig field that builds it ("fusion" for the fused branch)
    loss: str = ""             # its class loss ('' for the fused branch: it takes the ho and union losses)
    weight: str = ""           # the TrainConfig field weighing that loss
    per_pair_loss: str = ""    # its loss under pair labels, where it differs
    feature: str = "union"     # the CLIP embedding the feature loss pulls it towards ('global' or 'union')

    @property
    def boxes(self) -> tuple[str, ...]:
        """The boxes it pools, in its head's order."""
        return tuple(i for i in self.inputs if i in BOX_COLUMN)

    def loss_under(self, supervision: str) -> str:
        """Its class loss under ``supervision``."""
        return self.per_pair_loss if supervision == "pair-labels" and self.per_pair_loss else self.loss


GLOBAL = Branch("global", (MEAN,), "global_branch", "global", "w_global", feature="global")
HO = Branch("ho", ("human", "object", LAYOUT), "ho_branch", "mil", "w_mil", per_pair_loss="ho")
UNION = Branch("union", ("union",), "union_branch", "union", "w_union")
FUSED = Branch("fused", ("human", "object", LAYOUT, "union"), "fusion")
BRANCHES = (GLOBAL, HO, UNION)  # the switchable ones, in the order their losses are listed
PAIR_BRANCHES = (HO, UNION)     # late fusion's; early fusion has FUSED alone
BY_NAME = {b.name: b for b in BRANCHES + (FUSED,)}

# Each loss's weight field; the feature loss names no class and weighs every branch alike.
LOSS_WEIGHTS = {**{b.loss: b.weight for b in BRANCHES}, **{b.per_pair_loss: b.weight for b in BRANCHES
                                                           if b.per_pair_loss}, "feature": "w_feature",
                "contrast": "w_contrast"}

# What each class loss learns from, by supervision: CLIP's cached scores, or the cache's
# ground truth (hoidata.pair_labels). Image labels replace the global scores only: the union
# branch keeps CLIP's union scores, the only per-pair target without pair annotation.
LOSS_TARGETS = {
    "clip": {"global": "global_score", "mil": "global_score", "union": "union_score"},
    "image-labels": {"global": "image_labels", "mil": "image_labels", "union": "union_score"},
    "pair-labels": {"global": "image_labels", "ho": "pair_labels", "union": "pair_labels"},
}


def switches(*on: str, fusion: str = "late") -> dict:
    """The TrainConfig overrides that build exactly the branches named ``on`` (and ``fusion``)."""
    unknown = set(on) - {b.name for b in BRANCHES}
    assert not unknown, f"no such branch: {', '.join(sorted(unknown))}"
    return {**{b.switch: b.name in on for b in BRANCHES}, "fusion": fusion}
