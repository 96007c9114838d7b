"""Distillation losses: the student's branches against soft labels made from CLIP's raw scores.

A soft label is ``softmax(raw cosine / temperature)`` over a support of classes (all
classes, or the classes of a pair's detected object); the loss is KL(teacher || student)
over the same support, so it is 0 when the student matches and never negative.

- ``global``: global branch [B, C] <- global CLIP scores, over all classes.
- ``mil``: human-object pair scores [P, C] pooled over each image's pairs (max, or a soft
  max) <- global CLIP scores, over the classes some pair of the image can take
  (multiple-instance learning: the image says what happens, not which pair does it).
- ``union``: union pair scores [P, C] <- union CLIP scores of the same pairs.
- ``feature``: each branch's embedding <- CLIP's embedding of the same region (1 - cosine,
  summed over the branches; ``config.feature_targets``): the global branch's <- the image's
  global embedding; where the union level supervises, every pair branch's <- the union
  crop's. It names no class, so it holds the student to CLIP's whole embedding space, the
  directions of unseen classes included.

With ``config.supervision`` other than 'clip' (the supervised references), labels replace
CLIP's scores as targets (``config.loss_targets``): a row's target is its labelled classes,
equally weighted, over the same support (rows without a labelled class there are dropped):

- ``image-labels``: ``global`` and ``mil`` <- the image's ground-truth classes; ``union`` as above.
- ``pair-labels``: ``global`` <- the image's classes; ``ho`` and ``union``: each pair branch
  [P, C] <- the classes of the ground-truth pairs the candidate matches, per pair, over the
  object's classes and a learned 'no interaction' logit (:meth:`Student.none_logits`), the
  whole target of a pair that matches none (a negative).

With ``config.unseen`` (a zero-shot split), every support is restricted to the seen
classes: unseen classes get no soft label and no loss term, and their text embeddings take
no part in any softmax a loss reads (rows left without a seen class are dropped). Labels
come without them too (:class:`trainer.loader.CacheReader`): a pair that matched only unseen
classes is a negative, as in the standard zero-shot HOI protocol.

As in DETR's criterion, :class:`DistillationLoss` returns the unweighted losses by name;
``weights`` holds the weight of each, and :meth:`DistillationLoss.total` sums them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batch import Batch
from .branches import LOSS_WEIGHTS
from .config import TrainConfig

CONTRAST_TEMPERATURE = 0.07  # CLIP's initial one


def soft_kl(student: torch.Tensor, teacher_raw: torch.Tensor, support: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher_raw / T) || softmax(student)) on ``support``.

    student, teacher_raw: float32 [N, C] (logits; raw cosines); support: bool [N, C], every
    row with at least one True. Entries off the support take no part (and get no gradient).
    """
    neg = float("-inf")
    teacher = (teacher_raw / temperature).masked_fill(~support, neg)
    target = torch.softmax(teacher, -1)  # 0 off the support
    log_t = torch.log_softmax(teacher, -1).masked_fill(~support, 0)
    log_s = torch.log_softmax(student.masked_fill(~support, neg), -1).masked_fill(~support, 0)
    return (target * (log_t - log_s)).sum(-1).mean()


def label_kl(student: torch.Tensor, labels: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(target || softmax(student)) on ``support``, the target spreading
    equally over each row's labelled classes (student float32 [N, C]; labels, support bool
    [N, C], every row with a labelled class on its support): the cross-entropy to the labels,
    less the target's own entropy, so 0 when the student matches."""
    on = labels & support
    target = on.float() / on.sum(-1, keepdim=True)
    log_s = torch.log_softmax(student.masked_fill(~support, float("-inf")), -1).masked_fill(~support, 0)
    log_t = torch.log(target.clamp(min=1e-30))
    return (target * (log_t - log_s)).sum(-1).mean()


def mil_pool(logits: torch.Tensor, image: torch.Tensor, num_images: int, mode: str,
             temperature: float) -> torch.Tensor:
    """[B, C] image logits from pair logits [P, C] (-inf where a pair cannot take a class)
    of images ``image`` [P]: their max, or their log-mean-exp (a soft max) with ``temperature``.
    Classes no pair of an image can take stay -inf."""
    index = image[:, None].expand_as(logits)
    top = logits.new_full((num_images, logits.shape[1]), float("-inf"))
    top = top.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
    if mode == "max":
        return top
    shift = top.detach().clamp(min=-1e4)  # per image and class, for a stable exp (finite where no pair is)
    total = torch.zeros_like(top).index_add(0, image, torch.exp((logits - shift[image]) / temperature))
    count = torch.zeros_like(top).index_add(0, image, torch.isfinite(logits).float())
    lme = shift + temperature * torch.log(total.clamp(min=1e-30) / count.clamp(min=1))
    return torch.where(count > 0, lme, top)


class DistillationLoss(nn.Module):
    """The losses of ``config.active_losses`` (see the module docstring). seen: bool [C], the
    classes training may see (all when None)."""

    def __init__(self, config: TrainConfig, seen: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.seen = seen
        self.weights = {k: getattr(config, LOSS_WEIGHTS[k]) for k in config.active_losses}
        self.targets = config.loss_targets  # what each loss learns from: read on every step, derived once
        self.owner = config.loss_owners     # the branch whose logits each loss reads
        self.class_losses = {"global": self.loss_global, "mil": self.loss_mil, "ho": self.loss_ho,
                             "union": self.loss_union}

    def _target(self, loss: str, logits: torch.Tensor, support: torch.Tensor, scores: torch.Tensor | None,
                labels: torch.Tensor | None) -> torch.Tensor:
        """The loss of rows ``logits`` [N, C] over ``support`` bool [N, C] against CLIP's raw
        ``scores`` [N, C] or, where ``config.loss_targets`` says labels, ``labels`` bool [N, C];
        rows without a class to learn from on their support are dropped."""
        if self.targets[loss] in ("global_score", "union_score"):
            keep = support.any(1)
            if not keep.any():
                return logits.sum() * 0
            return soft_kl(logits[keep], scores[keep], support[keep], self.config.temperature)
        keep = (labels & support).any(1)
        if not keep.any():
            return logits.sum() * 0
        return label_kl(logits[keep], labels[keep], support[keep])

    def _seen(self, support: torch.Tensor) -> torch.Tensor:
        return support if self.seen is None else support & self.seen.to(support.device)

    def pair_support(self, batch: Batch) -> torch.Tensor:
        """bool [P, C]: the classes a pair's soft label and scores range over."""
        if self.config.label_support == "object":
            return self._seen(batch.class_mask)
        return self._seen(torch.ones_like(batch.class_mask))

    def loss_global(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        support = self._seen(torch.ones_like(logits, dtype=torch.bool))
        return self._target("global", logits, support, batch.global_score, batch.image_labels)

    def loss_mil(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        support = self.pair_support(batch)
        pooled = mil_pool(logits.masked_fill(~support, float("-inf")), batch.pair_image, batch.num_images,
                          self.config.mil, self.config.mil_temperature)
        image_support = torch.zeros_like(pooled).index_add(0, batch.pair_image, support.float()) > 0
        # images without a pair (or whose pairs have no class) say nothing
        return self._target("mil", pooled, image_support, batch.global_score, batch.image_labels)

    def loss_union(self, logits: torch.Tensor, batch: Batch, none: torch.Tensor | None = None) -> torch.Tensor:
        if self.targets["union"] == "pair_labels":
            return self.pair_label_loss(logits, batch, none)
        return self._target("union", logits, self.pair_support(batch), batch.union_score, None)

    def loss_ho(self, logits: torch.Tensor, batch: Batch, none: torch.Tensor | None = None) -> torch.Tensor:
        return self.pair_label_loss(logits, batch, none)

    def pair_label_loss(self, logits: torch.Tensor, batch: Batch, none: torch.Tensor) -> torch.Tensor:
        """Pair logits [P, C] and the branch's 'no interaction' logit ``none`` (a scalar) against
        the pairs' labels, over the object's (seen) classes and 'no interaction': a pair that
        matches no ground truth there has 'no interaction' as its whole target."""
        if not batch.num_pairs:
            return logits.sum() * 0 + none * 0
        support = self.pair_support(batch)
        labels = batch.pair_labels & support
        negative = ~labels.any(1, keepdim=True)
        ext = torch.cat([logits, none.float().expand(len(logits), 1)], 1)
        return label_kl(ext, torch.cat([labels, negative], 1), torch.cat([support, torch.ones_like(negative)], 1))

    def _feature_pairs(self, embeddings: dict[str, torch.Tensor], batch: Batch):
        """(branch embeddings [N, D], CLIP's embeddings of the same regions [N, D]) for each
        branch of ``config.feature_targets`` (``batch.global_embedding`` or ``union_embedding``)."""
        for branch, source in self.config.feature_targets.items():
            yield embeddings[branch].float(), (batch.global_embedding if source == "global"
                                               else batch.union_embedding).float()

    def loss_feature(self, embeddings: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Sum over ``config.feature_targets`` of the mean (1 - cosine) of a branch's embeddings
        [N, D] to CLIP's of the same regions."""
        total = embeddings[next(iter(self.config.feature_targets))].new_zeros(())
        for emb, target in self._feature_pairs(embeddings, batch):
            if len(target):
                total = total + (1 - F.cosine_similarity(emb, target, dim=-1)).mean()
        return total

    def loss_contrast(self, embeddings: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Sum over ``config.feature_targets`` of the cross-entropy of picking CLIP's embedding of
        each row's own region among the batch's (cosines / CONTRAST_TEMPERATURE)."""
        total = embeddings[next(iter(self.config.feature_targets))].new_zeros(())
        for emb, target in self._feature_pairs(embeddings, batch):
            if len(target) > 1:
                logits = F.normalize(emb, dim=-1) @ F.normalize(target, dim=-1).T
                total = total + F.cross_entropy(logits / CONTRAST_TEMPERATURE,
                                                torch.arange(len(target), device=target.device))
        return total

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch,
                embeddings: dict[str, torch.Tensor] | None = None,
                none: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Unweighted losses by name (scalars, float32). embeddings: the student's
        (:meth:`trainer.model.Student.embed`), which the feature loss reads; none: its 'no
        interaction' logits per pair branch (:meth:`Student.none_logits`), which the pair-label losses read."""
        out = {}
        for k in self.weights:
            if k in ("feature", "contrast"):
                continue
            args = (outputs[self.owner[k]].float(), batch)
            if self.targets[k] == "pair_labels":
                if not none:
                    raise ValueError("the pair-label losses need the student's 'no interaction' logits")
                args += (none[self.owner[k]],)
            out[k] = self.class_losses[k](*args)
        if "feature" in self.weights or "contrast" in self.weights:
            if embeddings is None:
                raise ValueError("the feature loss needs the student's embeddings (Student.embed)")
        if "feature" in self.weights:
            out["feature"] = self.loss_feature(embeddings, batch)
        if "contrast" in self.weights:
            out["contrast"] = self.loss_contrast(embeddings, batch)
        return out

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in losses.items())
