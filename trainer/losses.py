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

With ``config.unseen`` (a zero-shot split), every support is restricted to the seen
classes: unseen classes get no soft label and no loss term, and their text embeddings take
no part in any softmax a loss reads (rows left without a seen class are dropped).

As in DETR's criterion, :class:`DistillationLoss` returns the unweighted losses by name;
``weights`` holds the weight of each, and :meth:`DistillationLoss.total` sums them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Batch


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
        self.weights = {k: getattr(config, f"w_{k}") for k in config.active_losses}
        # Which model output each loss reads: in early fusion both pair losses train the fused scores.
        early = config.fusion == "early"
        self.source = {"global": "global", "mil": "fused" if early else "ho", "union": "fused" if early else "union"}

    def _seen(self, support: torch.Tensor) -> torch.Tensor:
        return support if self.seen is None else support & self.seen.to(support.device)

    def pair_support(self, batch: Batch) -> torch.Tensor:
        """bool [P, C]: the classes a pair's soft label and scores range over."""
        if self.config.label_support == "object":
            return self._seen(batch.class_mask)
        return self._seen(torch.ones_like(batch.class_mask))

    def loss_global(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return soft_kl(logits, batch.global_score, self._seen(torch.ones_like(logits, dtype=torch.bool)),
                       self.config.temperature)

    def loss_mil(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        support = self.pair_support(batch)
        pooled = mil_pool(logits.masked_fill(~support, float("-inf")), batch.pair_image, batch.num_images,
                          self.config.mil, self.config.mil_temperature)
        image_support = torch.zeros_like(pooled).index_add(0, batch.pair_image, support.float()) > 0
        keep = image_support.any(1)  # images without a pair (or whose pairs have no class) say nothing
        if not keep.any():
            return logits.sum() * 0
        return soft_kl(pooled[keep], batch.global_score[keep], image_support[keep], self.config.temperature)

    def loss_union(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        support = self.pair_support(batch)
        keep = support.any(1)
        if not keep.any():
            return logits.sum() * 0
        return soft_kl(logits[keep], batch.union_score[keep], support[keep], self.config.temperature)

    def loss_feature(self, embeddings: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Sum over ``config.feature_targets`` of the mean (1 - cosine) of a branch's embeddings
        [N, D] to CLIP's of the same regions (``batch.global_embedding`` or ``union_embedding``)."""
        targets = self.config.feature_targets
        total = embeddings[next(iter(targets))].new_zeros(())
        for branch, source in targets.items():
            target = batch.global_embedding if source == "global" else batch.union_embedding
            if len(target):
                cos = F.cosine_similarity(embeddings[branch].float(), target.float(), dim=-1)
                total = total + (1 - cos).mean()
        return total

    def forward(self, outputs: dict[str, torch.Tensor], batch: Batch,
                embeddings: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Unweighted losses by name (scalars, float32). embeddings: the student's
        (:meth:`trainer.model.Student.embed`), which the feature loss reads."""
        out = {k: getattr(self, f"loss_{k}")(outputs[self.source[k]].float(), batch)
               for k in self.weights if k != "feature"}
        if "feature" in self.weights:
            if embeddings is None:
                raise ValueError("the feature loss needs the student's embeddings (Student.embed)")
            out["feature"] = self.loss_feature(embeddings, batch)
        return out

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in losses.items())
