"""Settings are declared once, as dataclass fields with their help, choices and bounds: the
command line is built from them, code that builds a dataclass gets the same checks, and
``hoi train --config FILE`` reads the same fields."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from click.testing import CliRunner

from bench.synthetic_cache import make_synthetic_cache
from hoi.cli import main
from hoicore.errors import InputError
from hoidata.pairs import PairRule
from pipeline.teacher.options import TEACHER_CLI, RunOptions, TeacherOptions
from trainer.config import ConfigError, TrainConfig, read_config_file


@pytest.mark.parametrize("cls, command, fields", [
    (RunOptions, "teacher-cache", None), (TeacherOptions, "teacher-cache", TEACHER_CLI),
    (PairRule, "teacher-cache", None), (TrainConfig, "train", None), (TrainConfig, "ablate", None)])
def test_every_field_is_an_option_with_its_help_and_bounds(cls, command, fields):
    params = {p.name: p for p in main.commands[command].params}
    for f in dataclasses.fields(cls):
        if fields is not None and f.name not in fields:
            continue
        p = params[f.name]
        assert f.metadata["help"] in p.help, f.name
        low = f.metadata["min"]
        if low is not None:  # the bound is click's too: refused before anything runs
            assert getattr(p.type, "min", None) == low, f.name


@pytest.mark.parametrize("cls, changes, message", [
    (TrainConfig, {"hidden_dim": 0}, "hidden_dim must be at least 1, not 0"),
    (TrainConfig, {"hidden_dim": 10 ** 7}, "hidden_dim must be at most 8192"),
    (TrainConfig, {"lr": math.nan}, "lr must be a finite number"),
    (TrainConfig, {"lr": 0.0}, "lr must be above 0"),
    (TrainConfig, {"warmup": 1.0}, "warmup must be below 1"),
    (TrainConfig, {"prefetch": -1}, "prefetch must be at least 0"),
    (PairRule, {"max_humans": 0}, "max_humans must be at least 1, not 0"),
    (PairRule, {"human_score": 1.5}, "human_score must be at most 1, not 1.5"),
    (TeacherOptions, {"model": "m", "crop_mode": "stretch"}, "crop_mode must be one of squash, pad, center"),
    (TeacherOptions, {"model": "m", "union_margin": -0.1}, "union_margin must be at least 0"),
])
def test_code_gets_the_same_checks_as_the_command_line(cls, changes, message):
    with pytest.raises((ConfigError, InputError), match=message):
        cls(**changes).validated() if cls is TrainConfig else cls(**changes)


def test_teacher_templates_read_alike_from_a_list_or_a_tuple():
    assert TeacherOptions(model="m", templates=["{}", "a photo of {}."]) == TeacherOptions(
        model="m", templates=("{}", "a photo of {}."))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("settings") / "train.zarr", num_images=16,
                                pairs_per_image=2, num_classes=8, embed_dim=8, grid=(2, 2), images_per_shard=16,
                                image_chunk=8, pair_chunk=16)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_train_reads_a_config_file_and_the_command_line_overrides_it(cache, tmp_path, suffix):
    settings = {"epochs": 1, "hidden_dim": 16, "batch_size": 8, "progress": False, "threads": 1, "device": "cpu"}
    f = tmp_path / f"run{suffix}"
    f.write_text(json.dumps(settings) if suffix == ".json" else "\n".join(f"{k}: {json.dumps(v)}"
                                                                          for k, v in settings.items()))
    r = CliRunner().invoke(main, ["train", "--cache", str(cache), "-o", str(tmp_path / "run"), "--config", str(f),
                                  "--hidden-dim", "8"])
    assert r.exit_code == 0, r.output
    stored = json.loads((tmp_path / "run" / "checkpoint" / "checkpoint.json").read_text())["config"]
    assert stored["hidden_dim"] == 8 and stored["epochs"] == 1 and stored["batch_size"] == 8  # file, then options


@pytest.mark.parametrize("text, message", [
    ('{"hidden_dims": 16}', "unknown config field.*hidden_dims"),
    ('{"hidden_dim": "16"}', "hidden_dim is '16' .* it must be an integer"),
    ('[1, 2]', "expected an object of config fields"),
    ('{"epochs": ', "not a readable JSON file"),
])
def test_a_bad_config_file_is_refused_naming_it(tmp_path, text, message):
    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        read_config_file(f)
    assert "bad.json" in str(e.value)


def test_a_checkpoints_config_is_a_config_file(cache, tmp_path):
    """What a run recorded can be handed to the next run as it is."""
    r = CliRunner().invoke(main, ["train", "--cache", str(cache), "-o", str(tmp_path / "a"), "--epochs", "1",
                                  "--hidden-dim", "8", "--batch-size", "8", "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "a" / "checkpoint" / "checkpoint.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(meta["config"]))
    assert TrainConfig.from_dict(read_config_file(tmp_path / "a.json")) == TrainConfig.from_dict(meta["config"])
