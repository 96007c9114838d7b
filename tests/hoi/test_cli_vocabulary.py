"""One name per meaning across every ``hoi`` command, the renamed options' old spellings,
and ``-v`` / ``-q`` wherever they are typed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from hoi.cli import main
from hoi.command import RENAMED, HoiCommand

# Each meant two or more things before the commands got one vocabulary (--model: the CLIP, the
# detector, the scorer; --out / --results: the output; --count / --top / --image: the pictures).
RETIRED = {"--out", "--results", "--model", "--weights", "--skip-unknown-images", "--count", "--top", "--image"}
# What a command writes is -o/--output; these are the only other outputs, each an extra file
EXTRA_OUTPUTS = {"--per-class", "--plot", "--save-predictions", "--draw"}


def _commands(group: click.Group = main, path=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


def _options(cmd):
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]


def _kind(p: click.Option) -> str:
    if p.count:
        return "count"
    if p.is_flag:
        return "flag"
    if p.multiple:
        return "many"
    if isinstance(p.type, click.Path) and not p.type.exists:
        return "output"
    return "value"


COMMANDS = list(_commands())


def test_every_command_is_a_hoi_command():
    assert len(COMMANDS) > 10
    assert all(isinstance(cmd, HoiCommand) for _, cmd in COMMANDS), [n for n, c in COMMANDS
                                                                      if not isinstance(c, HoiCommand)]


def test_an_option_name_means_one_kind_of_thing_in_every_command():
    kinds: dict[str, dict[str, str]] = {}
    for name, cmd in COMMANDS:
        for p in _options(cmd):
            for opt in p.opts + p.secondary_opts:
                kinds.setdefault(opt, {})[name] = _kind(p)
    mixed = {opt: by for opt, by in kinds.items() if len(set(by.values())) > 1}
    assert not mixed
    assert not (set(kinds) & RETIRED), set(kinds) & RETIRED


def test_what_a_command_writes_is_dash_o_output():
    for name, cmd in COMMANDS:
        for p in _options(cmd):
            if _kind(p) == "output" and not set(p.opts) & EXTRA_OUTPUTS:
                assert set(p.opts) == {"-o", "--output"}, (name, p.opts)


def test_threads_are_torch_threads_and_jobs_run_at_once():
    for name, cmd in COMMANDS:
        for p in _options(cmd):
            if "--threads" in p.opts:
                assert "threads for torch" in p.help, name
            if "--jobs" in p.opts:
                assert "at once" in p.help, name


def test_overwrite_has_one_form():
    for name, cmd in COMMANDS:
        for p in _options(cmd):
            if "--overwrite" in p.opts:
                assert p.is_flag and not p.secondary_opts, name


@pytest.mark.parametrize("command", sorted(RENAMED))
def test_old_spellings_are_hidden_and_mean_the_new_names(command, caplog, tmp_path):
    cmd = next(c for n, c in COMMANDS if n.split()[-1] == command)
    shown = {o for p in _options(cmd) for o in p.opts}
    (tmp_path / "f").write_text("")
    for old, new in RENAMED[command].items():
        assert new in shown and old not in shown and old not in cmd.get_help(click.Context(cmd)).split()
        param = next(p for p in cmd.params if new in p.opts)
        value = _a_value(param, tmp_path)
        with caplog.at_level(logging.WARNING, logger="hoi"):
            ctx_old = cmd.make_context(command, [old] + ([value] if value else []), resilient_parsing=True)
        ctx_new = cmd.make_context(command, [new] + ([value] if value else []), resilient_parsing=True)
        assert ctx_old.params[param.name] == ctx_new.params[param.name] not in (None, False, 0)
        assert f"{old} is now {new}" in caplog.text


def _a_value(param: click.Option, tmp_path) -> str | None:
    """Something the option accepts (None: a flag)."""
    if param.is_flag or param.count:
        return None
    if isinstance(param.type, click.Choice):
        return param.type.choices[-1]
    if isinstance(param.type, click.Path):
        return str(tmp_path / "f") if param.type.file_okay else str(tmp_path)
    return "1"


def test_an_old_spelling_with_equals_is_respelled_too(tmp_path):
    train = main.commands["train"]
    ctx = train.make_context("train", ["--cache", str(tmp_path), f"--out={tmp_path / 'run'}"])
    assert ctx.params["out"] == str(tmp_path / "run")


def test_verbose_after_the_command_shows_the_traceback(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    args = ["eval-predictions", "--predictions", str(bad)]
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code == 1 and isinstance(quiet.exception, SystemExit) and "p.json" in quiet.output
    for loud in (["-v", *args], [*args, "-v"]):
        r = CliRunner().invoke(main, loud)
        assert r.exit_code == 1 and not isinstance(r.exception, SystemExit), loud  # the error itself, traceback kept


def test_usage_says_hoi_however_it_was_started():
    r = subprocess.run([sys.executable, "-m", "hoi", "demo", "--no-such-option"], capture_output=True, text=True)
    assert r.returncode == 2 and "Usage: hoi demo" in r.stderr, r.stderr


def test_visualize_draws_with_the_drawing_options(tmp_path, tiny_ls):
    from conftest import make_preds
    from PIL import Image

    from hoidata.predictions import write_predictions

    Image.new("RGB", (64, 48), (120, 120, 120)).save(tmp_path / "a.png")
    p = make_preds({"a.png": [([2, 2, 20, 40], [30, 10, 60, 30], 0, 0.9), ([2, 2, 20, 40], [30, 10, 60, 30], 1, 0.5)]},
                   "coord")
    p.labelspace = tiny_ls.to_dict()
    write_predictions(p, tmp_path / "p.json")
    r = CliRunner().invoke(main, ["visualize", "--predictions", str(tmp_path / "p.json"), "--images", str(tmp_path),
                                  "--draw-size", "300", "--draw-top", "1", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "a.png") as im:
        assert im.width == 300 and im.height > 300 * 48 / 64  # the long side asked for, the legend below
    assert json.loads((tmp_path / "p.json").read_text())["labelspace"]["name"] == tiny_ls.name
