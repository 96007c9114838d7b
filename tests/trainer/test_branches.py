"""The branch table (trainer.branches) and what the config derives from it: the heads built,
the losses computed, what each learns from and which logits it reads, the ablation grid."""

from __future__ import annotations

import pytest

from trainer.ablate import GRID
from trainer.branches import BY_NAME, LOSS_WEIGHTS, switches
from trainer.config import ConfigError, TrainConfig


@pytest.mark.parametrize("overrides, heads, losses, owners, targets", [
    ({}, ("global", "ho", "union"), ("global", "mil", "union", "feature"),
     {"global": "global", "mil": "ho", "union": "union"},
     {"global": "global_score", "mil": "global_score", "union": "union_score"}),
    ({"fusion": "early"}, ("global", "fused"), ("global", "mil", "union", "feature"),
     {"global": "global", "mil": "fused", "union": "fused"},
     {"global": "global_score", "mil": "global_score", "union": "union_score"}),
    ({"supervision": "image-labels", "w_feature": 0.0}, ("global", "ho", "union"), ("global", "mil", "union"),
     {"global": "global", "mil": "ho", "union": "union"},
     {"global": "image_labels", "mil": "image_labels", "union": "union_score"}),
    ({"supervision": "pair-labels", "union_branch": False}, ("global", "ho"), ("global", "ho", "feature"),
     {"global": "global", "ho": "ho", "union": "union"}, {"global": "image_labels", "ho": "pair_labels"}),
    ({"global_branch": False, "ho_branch": False}, ("union",), ("union", "feature"),
     {"global": "global", "mil": "ho", "union": "union"}, {"union": "union_score"}),
])
def test_the_config_derives_heads_losses_and_targets_from_the_table(overrides, heads, losses, owners, targets):
    cfg = TrainConfig(**overrides).validated()
    assert tuple(b.name for b in cfg.branches) == heads
    assert cfg.active_losses == losses and cfg.loss_owners == owners and cfg.loss_targets == targets
    assert all(LOSS_WEIGHTS[k] for k in losses)


def test_the_feature_loss_pulls_pair_branches_to_the_union_crop_only_where_the_union_level_supervises():
    assert TrainConfig().feature_targets == {"global": "global", "ho": "union", "union": "union"}
    assert TrainConfig(union_branch=False).feature_targets == {"global": "global"}
    assert TrainConfig(fusion="early").feature_targets == {"global": "global", "fused": "union"}
    assert TrainConfig(w_feature=0.0).feature_targets == {}


def test_the_ablation_grid_is_branch_switches_and_a_branch_without_its_loss_is_refused():
    assert switches("union") == {"global_branch": False, "ho_branch": False, "union_branch": True, "fusion": "late"}
    assert [tuple(b.name for b in TrainConfig(**r.overrides).branches) for r in GRID] == [
        ("global", "ho"), ("union",), ("ho", "union"), ("global", "ho", "union"), ("global", "fused")]
    assert BY_NAME["fused"].inputs == ("human", "object", "layout", "union")
    with pytest.raises(ConfigError, match="the ho branch is on but w_mil is 0.*--no-ho-branch or --w-mil > 0"):
        TrainConfig(w_mil=0.0).validated()
    with pytest.raises(ConfigError, match="early fusion needs w_mil or w_union"):
        TrainConfig(fusion="early", w_mil=0.0, w_union=0.0).validated()
