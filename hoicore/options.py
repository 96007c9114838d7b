"""Settings declared once, as dataclass fields, and read from there by the command line.

A field made with :func:`option` carries its help, choices and bounds;
:func:`check_fields` enforces them on a dataclass instance and :func:`click_options`
turns the dataclass into click options, one per field, so a setting's name, help and
default are written in one place (``pipeline.teacher.options.RunOptions``, ``trainer.config.TrainConfig``,
``pipeline.detection.options.DetectOptions``).

Two default semantics, chosen per command:
- ``given_only=False``: each option defaults to the field's default (shown in the help),
  and the command builds the dataclass from every option;
- ``given_only=True``: each option defaults to None, so that only the options given
  override another source (a resumed run's own configuration); the help still says the
  field's default.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, field, fields

import click


def option(default, help: str, choices: tuple | None = None, *, minimum: int | float | None = None,
           maximum: int | float | None = None, min_open: bool = False, max_open: bool = False,
           runtime: bool = False, metavar: str | None = None, flag: str | None = None):
    """A dataclass field with its command-line declaration. ``default``: ``MISSING`` for a
    field every caller gives (a required option). ``minimum`` and ``maximum``: inclusive
    bounds, but ``min_open`` / ``max_open`` exclude the bound itself (a bounded float must be
    finite too). ``runtime``: how to run, not what is computed (free to differ on resume).
    ``flag``: the option's name when it is not the field's (``--teacher-model`` for
    ``model``); a ``tuple[...]`` field is a repeatable option."""
    metadata = {"help": help, "choices": choices, "min": minimum, "max": maximum, "min_open": min_open,
                "max_open": max_open, "runtime": runtime, "metavar": metavar, "flag": flag}
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


def check_fields(obj, error: type[Exception]) -> None:
    """Raise ``error`` naming the first field outside its choices or its bounds (a field whose
    default is None may be None)."""
    for f in fields(obj):
        allowed, value = f.metadata.get("choices"), getattr(obj, f.name)
        if value is None and f.default is None:  # an optional setting left unset
            continue
        minimum, maximum = f.metadata.get("min"), f.metadata.get("max")
        if allowed and value not in allowed:
            raise error(f"{f.name} must be one of {', '.join(allowed)}, not {value!r}")
        if (minimum is not None or maximum is not None) and isinstance(value, float) and not math.isfinite(value):
            raise error(f"{f.name} must be a finite number, not {value!r}")
        if minimum is not None and f.metadata.get("min_open") and value <= minimum:
            raise error(f"{f.name} must be above {minimum}, not {value!r}")
        if minimum is not None and value < minimum:
            raise error(f"{f.name} must be at least {minimum}, not {value!r}")
        if maximum is not None and f.metadata.get("max_open") and value >= maximum:
            raise error(f"{f.name} must be below {maximum}, not {value!r}")
        if maximum is not None and value > maximum:
            raise error(f"{f.name} must be at most {maximum}, not {value!r}")


def _click_type(f, kind: type):
    if f.metadata.get("choices"):
        return click.Choice(f.metadata["choices"])
    minimum, maximum = f.metadata.get("min"), f.metadata.get("max")
    if minimum is not None or maximum is not None:
        bounded = click.IntRange if kind is int else click.FloatRange
        return bounded(min=minimum, max=maximum, min_open=f.metadata.get("min_open", False),
                       max_open=f.metadata.get("max_open", False))
    return kind


def _kind(cls, f) -> tuple[type, bool]:
    """(value type, repeatable) of a field, from its annotation: ``int | None`` -> (int, False),
    ``tuple[str, ...]`` -> (str, True)."""
    hint = typing.get_type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def click_options(cls, *, given_only: bool = False, only: tuple[str, ...] | None = None,
                  exclude: tuple[str, ...] = ()):
    """A decorator adding one click option per field of the dataclass ``cls``, in declaration
    order: ``--name/--no-name`` for bools (a plain ``--name`` flag for one off by default,
    unless ``given_only``), repeatable for tuples, required for a field without a default,
    typed (choices, bounds) for the rest. ``only`` / ``exclude``: field names, for a command
    that takes some of the fields (the others then keep their defaults, or the command
    declares them its own way). :func:`take` builds the dataclass back from the options."""
    unknown = (set(only or ()) | set(exclude)) - {f.name for f in fields(cls)}
    assert not unknown, f"{cls.__name__} has no field {', '.join(sorted(unknown))}"
    chosen = [f for f in fields(cls) if (only is None or f.name in only) and f.name not in exclude]

    def decorate(command):
        for f in reversed(chosen):
            required = f.default is MISSING
            assert not (required and given_only), f"{cls.__name__}.{f.name} needs a default to be an override"
            flag, help_text = f.metadata.get("flag") or f.name.replace("_", "-"), f.metadata["help"]
            kind, many = _kind(cls, f)
            default = None if given_only or required else f.default
            if given_only:
                shown = ("on" if f.default else "off") if kind is bool else f.default
                help_text = f"{help_text}  [default: {shown}]"
            extra = {"show_default": False} if given_only else {}
            if kind is bool and not given_only and not f.default:  # off unless given: a plain flag
                command = click.option(f"--{flag}", f.name, is_flag=True, default=False, help=help_text)(command)
            elif kind is bool:
                command = click.option(f"--{flag}/--no-{flag}", f.name, default=default, help=help_text,
                                       **extra)(command)
            else:
                command = click.option(f"--{flag}", f.name, type=_click_type(f, kind), default=default,
                                       required=required, multiple=many, help=help_text,
                                       metavar=f.metadata.get("metavar"), **extra)(command)
        return command
    return decorate


def take(cls, options: dict, **given):
    """``cls`` built from the entries of ``options`` (a command's keyword arguments) that are
    its fields, which are removed from ``options``; ``given``: fields the command sets itself.
    Repeatable options come back as tuples."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: options.pop(k) for k in list(options) if k in names}, **given)
