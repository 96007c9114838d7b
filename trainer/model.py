"""The student: three branches over the teacher's cached dense map, scored against CLIP's text.

::

    dense [B, H, W, D] --DenseAdapter--> map [B, H, W, F]
        global:        mean over the grid            -> head -> embedding [B, D]
        human-object:  RoI(human), RoI(object), layout -> head -> embedding [P, D]
        union:         RoI(union)                    -> head -> embedding [P, D]
        early fusion:  RoI(human), RoI(object), layout, RoI(union) -> one head -> [P, D]

With ``adapters="per-level"`` each supervision level has its own adapter and RoI
projection over the shared cached map: the global level (global branch, and the human and
object boxes the MIL loss trains) and the union level (union boxes). Losses of one level
then cannot bend the features of the other (with one shared adapter, the global losses cost
the union branch several mAP on the bundled benchmark).

The adapted map is ``x + mix(context)``, and every branch reads it through linear pooling
only (the mean over the grid, RoI-align), so :class:`AdaptedMap` pools the two terms and
applies the pointwise ``mix`` to the pooled rows: the same function, without mixing all
B x H x W cells (that product was most of a training step's cost on the CPU).

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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .batch import Batch
from .config import TrainConfig
from .roi import RoIPool

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial value
SPATIAL_FEATURES = 17
# RoI-align samples 2 x 2 points per bin (aligned=True: a box [0, W] covers exactly the W
# cells): a fixed ratio keeps the cost independent of box size and the result deterministic.
ROI_SAMPLING = 2
# Box columns of Batch.grid_boxes (0 human, 1 object, 2 union) that each pair branch pools,
# and the supervision level whose features each column is pooled from.
BOXES = {"ho": (0, 1), "union": (2,), "fused": (0, 1, 2)}
BOX_LEVEL = {0: "global", 1: "global", 2: "union"}


class AdaptedMap(NamedTuple):
    """The adapted map ``base + mix(context)`` (each [B, H, W, F], channels-last), kept as
    its two terms: ``mix`` is a pointwise affine map (a 1 x 1 convolution) or None (identity),
    ``context`` None where there is none. Linear pooling commutes with ``mix``, so each term
    is pooled first and ``mix`` applied to the few pooled rows."""

    base: torch.Tensor
    context: torch.Tensor | None
    mix: nn.Conv2d | None

    def _mixed(self, pooled: torch.Tensor, coverage: torch.Tensor | float) -> torch.Tensor:
        """mix of pooled context rows [..., F]: its bias enters with the pooling weights' total."""
        if self.mix is None:
            return pooled
        return F.linear(pooled, self.mix.weight[:, :, 0, 0]) + coverage * self.mix.bias

    def pool(self, rois: torch.Tensor, out: int, sampling: int,
             with_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(RoI-align of the map at rois [K, 5]: [K, out * out, F]; with_mean: the map's mean
        over the grid [B, F], else None). See :class:`trainer.roi.RoIPool`."""
        pool = RoIPool(rois, self.base.shape[:3], out, sampling, dtype=self.base.dtype, with_mean=with_mean)
        pooled, mean = pool(self.base)
        if self.context is None:
            return pooled, mean
        ctx, ctx_mean = pool(self.context)  # the same boxes: the same weights, built once
        pooled = pooled + self._mixed(ctx, pool.coverage[..., None])
        return pooled, (mean + self._mixed(ctx_mean, 1.0) if with_mean else None)

    def full(self) -> torch.Tensor:
        """[B, H, W, F]: the whole map (for checks; the branches never need it)."""
        return self.base if self.context is None else self.base + self._mixed(self.context, 1.0)


class DenseAdapter(nn.Module):
    """[B, H, W, D] cached tokens -> :class:`AdaptedMap` [B, H, W, F]: per-token norm and
    projection, then (``context``) a residual 3 x 3 convolution so that each cell sees its
    neighbours, full ('conv') or depthwise then pointwise ('depthwise'), or none ('none')."""

    def __init__(self, embed_dim: int, hidden: int, context: str = "conv"):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)  # token norms vary with the teacher; the student should not care
        self.proj = nn.Linear(embed_dim, hidden)
        if context == "conv":
            self.context = nn.Conv2d(hidden, hidden, 3, padding=1)
        elif context == "depthwise":
            self.context = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
                                         nn.Conv2d(hidden, hidden, 1))
        else:
            self.context = None

    def tokens(self, dense: torch.Tensor) -> torch.Tensor:
        """[B, H, W, F]: ``proj(norm(dense))``, with the norm's scale and shift folded into the
        projection. The same function; but the cached tokens need no gradient, so the backward
        skips the gradient of the norm's output (a product as large as the projection)."""
        weight = self.proj.weight * self.norm.weight                       # [F, D]
        bias = self.proj.bias + self.proj.weight @ self.norm.bias          # [F]
        return F.linear(F.layer_norm(dense, dense.shape[-1:], eps=self.norm.eps), weight, bias)

    def forward(self, dense: torch.Tensor) -> AdaptedMap:
        x = self.tokens(dense)                             # [B, H, W, F]
        if self.context is None:
            return AdaptedMap(x, None, None)
        spatial, mix = (self.context, None) if isinstance(self.context, nn.Conv2d) else self.context
        ctx = spatial(F.gelu(x).permute(0, 3, 1, 2))      # [B, F, H, W], channels-last in memory
        return AdaptedMap(x, ctx.permute(0, 2, 3, 1), mix)


class RoIFeatures(nn.Module):
    """Boxes RoI-aligned on an :class:`AdaptedMap` (roi_size x roi_size samples) to [K, F]
    features: the samples flattened channel-major and projected."""

    def __init__(self, hidden: int, roi_size: int):
        super().__init__()
        self.roi_size = roi_size
        self.proj = nn.Linear(hidden * roi_size * roi_size, hidden)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """[K, F] features of RoI-aligned boxes pooled [K, roi_size * roi_size, F]."""
        return F.gelu(self.proj(pooled.transpose(1, 2).flatten(1)))


def distinct_boxes(batch: Batch, cols: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rois float [K, 5]: image index and grid box of each distinct box of columns ``cols``
    of ``batch.grid_boxes``; inverse int64 [P * len(cols)]: each pair's box (pair-major) among them).

    A detection takes part in many pairs (every human with every object): each distinct box
    of an image is pooled once and its features handed to every pair that has it."""
    boxes = batch.grid_boxes[:, cols]  # [P, k, 4]
    idx = batch.pair_image[:, None, None].expand(-1, len(cols), 1).to(boxes.dtype)
    return torch.unique(torch.cat([idx, boxes], 2).reshape(-1, 5), dim=0, return_inverse=True)


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


class Student(nn.Module):
    """The student of ``config`` over text embeddings ``text`` float32 [C, D] (from the cache,
    not a weight: the checkpoint stays valid for any prompt set of the same teacher).

    With ``config.residual`` every branch's embedding is :func:`clip_regions`' CLIP
    embedding of its region plus its head's output, the head's last layer starting at zero
    and the logit scales at 1 / temperature: before training the student scores every class,
    seen or not, as CLIP's dense map does."""

    def __init__(self, config: TrainConfig, text: torch.Tensor):
        super().__init__()
        self.config = config
        embed_dim, hidden = text.shape[1], config.hidden_dim
        self.register_buffer("text", F.normalize(text.float(), dim=-1), persistent=False)
        cols = sorted({c for k in config.pair_branches for c in BOXES[k]})  # box columns pooled
        levels = sorted({BOX_LEVEL[c] for c in cols} | ({"global"} if config.global_branch else set()))
        self.adapters = nn.ModuleDict({k: DenseAdapter(embed_dim, hidden, config.context)
                                       for k in map(self.feature_key, levels)})
        # the box columns each feature map pools: one RoI-align per map, all its columns at once
        self.cols_of = {k: [c for c in cols if self.feature_key(BOX_LEVEL[c]) == k]
                        for k in sorted({self.feature_key(BOX_LEVEL[c]) for c in cols})}
        self.rois = nn.ModuleDict({k: RoIFeatures(hidden, config.roi_size) for k in self.cols_of})
        self.heads = nn.ModuleDict()
        if config.global_branch:
            self.heads["global"] = mlp(hidden, hidden, embed_dim)
        if config.ho_branch:
            self.spatial = mlp(SPATIAL_FEATURES, hidden, hidden)
        for name in config.pair_branches:
            width = {"ho": 3, "union": 1, "fused": 4}[name] * hidden
            self.heads[name] = mlp(width, hidden, embed_dim)
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
        global_key = self.feature_key("global") if "global" in self.heads else None
        roi, mean = {}, {}
        for key, adapter in self.adapters.items():
            cols = self.cols_of.get(key, []) if P else []
            rois, inverse = distinct_boxes(batch, cols)
            pooled, mean[key] = adapter(batch.dense).pool(rois, self.config.roi_size, ROI_SAMPLING,
                                                          with_mean=key == global_key)
            if cols:
                feats = self.rois[key](pooled)[inverse].view(P, len(cols), -1)
                roi.update({c: feats[:, j] for j, c in enumerate(cols)})
        base = clip_regions(batch, self.config.roi_size) if self.config.residual else {}
        out = {}
        if global_key is not None:
            out["global"] = self.heads["global"](mean[global_key])
        if base and "global" in out:  # the heads' outputs are corrections of CLIP's embeddings
            out["global"] = out["global"] + base["global"]
        pair = self.config.pair_branches
        if P == 0:
            return {**out, **{k: self.text.new_zeros(0, self.text.shape[1]) for k in pair}}
        for name in pair:
            parts = [roi[c] for c in BOXES[name]]
            if name in ("ho", "fused"):
                parts.insert(2, self.spatial(spatial_features(batch.norm_boxes)))
            out[name] = self.heads[name](torch.cat(parts, 1))
            if base:
                out[name] = out[name] + base["pair"]
        return out


def clip_regions(batch: Batch, roi_size: int) -> dict[str, torch.Tensor]:
    """CLIP's own embeddings of the student's regions, from the cached dense map (already
    projected into the joint space), L2-normalised: 'global' [B, D], the map's mean over the
    grid; 'pair' [P, D], its RoI-align over each pair's union box as the teacher cut it
    (roi_size x roi_size bins, averaged by their coverage). No weight: the dense map is
    CLIP's, so these score unseen classes exactly as well as CLIP's map does."""
    rois, inverse = distinct_boxes(batch, [2] if batch.num_pairs else [])
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
