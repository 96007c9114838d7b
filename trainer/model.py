"""The student: three branches over the teacher's cached dense map, scored against CLIP's text.

::

    dense [B, H, W, D] --DenseAdapter--> map [B, H, W, F]
        global:        mean over the grid            -> head -> embedding [B, D]
        human-object:  RoI(human), RoI(object), layout -> head -> embedding [P, D]
        union:         RoI(union)                    -> head -> embedding [P, D]
        early fusion:  RoI(human), RoI(object), layout, RoI(union) -> one head -> [P, D]

The branches, what each reads and which loss trains it are one table
(:mod:`trainer.branches`); :meth:`Student.embed` follows it.

With ``adapters="per-level"`` each supervision level has its own adapter and RoI
projection over the shared cached map: the global level (global branch, and the human and
object boxes the MIL loss trains) and the union level (union boxes). Losses of one level
then cannot bend the features of the other (with one shared adapter, the global losses cost
the union branch several mAP on the bundled benchmark).

The adapted map is ``x + mix(context)``, and every branch reads it through linear pooling
only (the mean over the grid, RoI-align), so :class:`trainer.roi.AdaptedMap` pools the two
terms and applies the pointwise ``mix`` to the pooled rows: the same function, without
mixing all B x H x W cells (that product was most of a training step's cost on the CPU).
That and the other savings (each distinct box pooled once, RoI-align as a matrix product)
stay behind :func:`trainer.roi.pool_boxes`, whose plain form the tests compare it with.

Every embedding is scored by cosine against the cached HOI text embeddings [C, D] times a
learned logit scale per branch, so a class never seen in training is scored like any other.
Branches that are switched off are not built: they contribute nothing, not even weights.
:meth:`Student.embed` gives the embeddings themselves (the feature loss reads them), and
:meth:`Student.logits` scores them; ``forward`` is the two in turn. With ``residual`` each
embedding is CLIP's own embedding of the branch's region (:func:`clip_regions`, from the
cached dense map) plus the head's output, which starts at zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .batch import Batch
from .branches import BOX_COLUMN, BOX_LEVEL, GLOBAL, LAYOUT, MEAN
from .config import TrainConfig
from .roi import ROI_SAMPLING, DenseAdapter, RoIFeatures, RoIPool, distinct_boxes, pool_boxes

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial value
SPATIAL_FEATURES = 17


def spatial_features(boxes: torch.Tensor) -> torch.Tensor:
    """[P, 17] layout of human and object boxes [P, 2, 4] (divided by the image size): both
    boxes (x1, y1, x2, y2), the object's centre offset and log size ratios relative to the
    human's size, log areas, IoU and the intersection over each area."""
    h, o = boxes[:, 0], boxes[:, 1]
    wh_h = (h[:, 2:] - h[:, :2]).clamp(min=1e-4)
    wh_o = (o[:, 2:] - o[:, :2]).clamp(min=1e-4)
    c_h, c_o = (h[:, :2] + h[:, 2:]) / 2, (o[:, :2] + o[:, 2:]) / 2
    area_h, area_o = wh_h.prod(1), wh_o.prod(1)
    inter = (torch.minimum(h[:, 2:], o[:, 2:]) - torch.maximum(h[:, :2], o[:, :2])).clamp(min=0).prod(1)
    iou = inter / (area_h + area_o - inter)
    return torch.cat([h, o, (c_o - c_h) / wh_h, torch.log(wh_o / wh_h), torch.log(torch.stack([area_h, area_o], 1)),
                      torch.stack([iou, inter / area_h, inter / area_o], 1)], 1)


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class Head(nn.Sequential):
    """A branch's head: an MLP from the concatenation of what the branch reads
    (:attr:`trainer.branches.Branch.inputs`, F features each) to an embedding [N, D]."""

    def __init__(self, inputs: tuple[str, ...], hidden: int, embed_dim: int):
        super().__init__(nn.Linear(len(inputs) * hidden, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
        self.inputs = inputs

    def read(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """[N, D] from ``parts``: each input's features [N, F] by name."""
        if len(self.inputs) == 1:  # nothing to join: no copy on every step
            return self(parts[self.inputs[0]])
        return self(torch.cat([parts[k] for k in self.inputs], 1))


class Student(nn.Module):
    """The student of ``config`` over text embeddings ``text`` float32 [C, D] (from the cache,
    not a weight: the checkpoint stays valid for any prompt set of the same teacher).

    Its branches are ``config.branches`` (:mod:`trainer.branches`): one :class:`Head` each,
    over the features of the boxes it reads (pooled by :func:`trainer.roi.pool_boxes` from
    the adapter of each box's level), the map's mean (global) and the boxes' layout.

    With ``config.residual`` every branch's embedding is :func:`clip_regions`' CLIP
    embedding of its region plus its head's output, the head's last layer starting at zero
    and the logit scales at 1 / temperature: before training the student scores every class,
    seen or not, as CLIP's dense map does."""

    def __init__(self, config: TrainConfig, text: torch.Tensor):
        super().__init__()
        self.config = config
        embed_dim, hidden = text.shape[1], config.hidden_dim
        self.register_buffer("text", F.normalize(text.float(), dim=-1), persistent=False)
        branches = config.branches
        boxes = sorted({x for b in branches for x in b.boxes}, key=BOX_COLUMN.get)  # the boxes pooled
        levels = sorted({BOX_LEVEL[x] for x in boxes} | ({"global"} if config.global_branch else set()))
        self.adapters = nn.ModuleDict({k: DenseAdapter(embed_dim, hidden, config.context)
                                       for k in map(self.feature_key, levels)})
        # the boxes each feature map pools: one RoI-align per map, all its boxes at once
        self.boxes_of = {k: [x for x in boxes if self.feature_key(BOX_LEVEL[x]) == k]
                         for k in sorted({self.feature_key(BOX_LEVEL[x]) for x in boxes})}
        self.rois = nn.ModuleDict({k: RoIFeatures(hidden, config.roi_size) for k in self.boxes_of})
        self.heads = nn.ModuleDict()
        if config.global_branch:
            self.heads[GLOBAL.name] = Head(GLOBAL.inputs, hidden, embed_dim)
        if any(LAYOUT in b.inputs for b in branches):
            self.spatial = mlp(SPATIAL_FEATURES, hidden, hidden)
        for b in branches:
            if b is not GLOBAL:
                self.heads[b.name] = Head(b.inputs, hidden, embed_dim)
        init_scale = INIT_LOGIT_SCALE
        if config.residual:  # after the random init, so the other weights are those of the plain student
            init_scale = min(math.log(1 / config.temperature), MAX_LOGIT_SCALE)
            for head in self.heads.values():
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)
        self.logit_scale = nn.ParameterDict({k: nn.Parameter(torch.tensor(init_scale)) for k in self.heads})
        if config.supervision == "pair-labels":  # trained on negatives too: a pair may have no interaction
            self.no_interaction = nn.ParameterDict({k: nn.Parameter(torch.tensor(0.0)) for k in config.pair_branches})

    def none_logits(self) -> dict[str, torch.Tensor]:
        """Pair branch -> its learned 'no interaction' logit (a scalar beside the [P, C] class
        logits, in the same softmax), for a student trained on pair labels; else empty."""
        return dict(self.no_interaction.items()) if hasattr(self, "no_interaction") else {}

    def feature_key(self, level: str) -> str:
        """The adapter (and RoI projection) serving a supervision level."""
        return level if self.config.adapters == "per-level" else "shared"

    def score(self, name: str, embedding: torch.Tensor) -> torch.Tensor:
        """[N, C] logits: scale x cosine(embedding, text)."""
        scale = self.logit_scale[name].clamp(max=MAX_LOGIT_SCALE).exp()
        return scale * F.normalize(embedding.float(), dim=-1) @ self.text.T

    def logits(self, embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits float32 per branch (see :meth:`forward`) from :meth:`embed`'s embeddings."""
        return {k: self.score(k, v) for k, v in embeddings.items()}

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Logits float32 per branch, over all classes (restricting them is the caller's
        choice): 'global' [B, C]; per pair [P, C]: 'ho' and 'union' (late fusion) or 'fused'."""
        return self.logits(self.embed(batch))

    def embed(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Embeddings per branch in CLIP's joint space (not normalised): 'global' [B, D]; per
        pair [P, D]: 'ho' and 'union' (late fusion) or 'fused'."""
        P = batch.num_pairs
        global_key = self.feature_key("global") if GLOBAL.name in self.heads else None
        parts = {}  # what the heads read, by name: each box's features [P, F], the mean [B, F], the layout
        for key, adapter in self.adapters.items():
            boxes = self.boxes_of.get(key, []) if P else []
            feats, mean = pool_boxes(adapter, self.rois[key] if boxes else None, batch.dense, batch.grid_boxes,
                                     batch.pair_image, [BOX_COLUMN[x] for x in boxes], self.config.roi_size,
                                     with_mean=key == global_key)
            parts.update(zip(boxes, feats))
            if key == global_key:
                parts[MEAN] = mean
        base = clip_regions(batch, self.config.roi_size) if self.config.residual else {}
        out = {}
        if global_key is not None:
            out[GLOBAL.name] = self.heads[GLOBAL.name].read(parts)
            if base:  # the heads' outputs are corrections of CLIP's embeddings
                out[GLOBAL.name] = out[GLOBAL.name] + base["global"]
        pair = self.config.pair_branches
        if P == 0:
            return {**out, **{k: self.text.new_zeros(0, self.text.shape[1]) for k in pair}}
        if hasattr(self, "spatial"):
            parts[LAYOUT] = self.spatial(spatial_features(batch.norm_boxes))
        for name in pair:
            out[name] = self.heads[name].read(parts)
            if base:
                out[name] = out[name] + base["pair"]
        return out


def clip_regions(batch: Batch, roi_size: int) -> dict[str, torch.Tensor]:
    """CLIP's own embeddings of the student's regions, from the cached dense map (already
    projected into the joint space), L2-normalised: 'global' [B, D], the map's mean over the
    grid; 'pair' [P, D], its RoI-align over each pair's union box as the teacher cut it
    (roi_size x roi_size bins, averaged by their coverage). No weight: the dense map is
    CLIP's, so these score unseen classes exactly as well as CLIP's map does."""
    rois, inverse = distinct_boxes(batch.grid_boxes, batch.pair_image, [BOX_COLUMN["union"]] if batch.num_pairs else [])
    pool = RoIPool(rois, batch.dense.shape[:3], roi_size, ROI_SAMPLING, dtype=batch.dense.dtype, with_mean=True)
    pooled, mean = pool(batch.dense)                                     # [K, bins, D], [B, D]
    region = pooled.sum(1) / pool.coverage.sum(1, keepdim=True).clamp(min=1e-6)
    return {"global": F.normalize(mean, dim=-1), "pair": F.normalize(region, dim=-1)[inverse]}


def state_shapes(config: TrainConfig, text_shape: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight of the student of ``config`` over text [C, D], computed on
    the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = Student(config, torch.empty(text_shape))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, none: torch.Tensor | None = None) -> torch.Tensor:
    """[N, C] softmax over the True entries of mask [N, C]; 0 elsewhere, and on rows without one.
    none: a 'no interaction' logit (a scalar) that joins every row's softmax and takes its
    share of the mass, which is then left out (a pair judged a negative scores low everywhere)."""
    x = logits.float().masked_fill(~mask, float("-inf"))
    if none is None:
        p = torch.softmax(x, dim=-1)
    else:
        p = torch.softmax(torch.cat([x, none.float().expand(len(x), 1)], 1), dim=-1)[:, :-1]
    return torch.where(mask, p, torch.zeros_like(p))


def pair_scores(outputs: dict[str, torch.Tensor], class_mask: torch.Tensor, union_weight: float = 0.5,
                none: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """[P, C] test-time pair scores: each pair branch's softmax over the classes of the pair's
    object (class_mask [P, C]), and its 'no interaction' logit where ``none`` has one
    (:meth:`Student.none_logits`); in late fusion the union branch's weighted by
    ``union_weight`` and the human-object branch's by the rest (0.5: their plain average)."""
    none = none or {}
    if "ho" in outputs and "union" in outputs:
        return (union_weight * masked_softmax(outputs["union"], class_mask, none.get("union"))
                + (1 - union_weight) * masked_softmax(outputs["ho"], class_mask, none.get("ho")))
    name = next(k for k in ("fused", "ho", "union") if k in outputs)
    return masked_softmax(outputs[name], class_mask, none.get(name))
