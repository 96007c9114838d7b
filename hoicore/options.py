"""Settings declared once, as dataclass fields, and read from there by the command line.

A field made with :func:`option` carries its help, choices and lower bound;
:func:`check_fields` enforces them on a dataclass instance and :func:`click_options`
turns the dataclass into click options, one per field, so a setting's name, help and
default are written in one place (``pipeline.options.RunOptions``, ``trainer.config.TrainConfig``).

Two default semantics, chosen per command:
- ``given_only=False``: each option defaults to the field's default (shown in the help),
  and the command builds the dataclass from every option;
- ``given_only=True``: each option defaults to None, so that only the options given
  override another source (a resumed run's own configuration); the help still says the
  field's default.
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields

import click


def option(default, help: str, choices: tuple | None = None, *, minimum: int | float | None = None,
           runtime: bool = False, metavar: str | None = None):
    """A dataclass field with its command-line declaration. ``runtime``: how to run, not
    what is computed (free to differ on resume)."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": minimum, "runtime": runtime,
                                            "metavar": metavar})


def check_fields(obj, error: type[Exception]) -> None:
    """Raise ``error`` naming the first field outside its choices or below its minimum."""
    for f in fields(obj):
        allowed, minimum, value = f.metadata.get("choices"), f.metadata.get("min"), getattr(obj, f.name)
        if allowed and value not in allowed:
            raise error(f"{f.name} must be one of {', '.join(allowed)}, not {value!r}")
        if minimum is not None and value < minimum:
            raise error(f"{f.name} must be at least {minimum}, not {value!r}")


def _click_type(f, kind: type):
    if f.metadata.get("choices"):
        return click.Choice(f.metadata["choices"])
    minimum = f.metadata.get("min")
    if minimum is not None:
        return click.IntRange(min=minimum) if kind is int else click.FloatRange(min=minimum)
    return kind


def click_options(cls, *, given_only: bool = False):
    """A decorator adding one click option per field of the dataclass ``cls``, in declaration
    order: ``--name/--no-name`` for bools, typed (choices, lower bounds) for the rest."""
    def decorate(command):
        for f in reversed(fields(cls)):
            assert f.default is not MISSING, f"{cls.__name__}.{f.name} needs a default to be an option"
            flag, help_text = f.name.replace("_", "-"), f.metadata["help"]
            kind = type(f.default) if f.default is not None else str
            default = None if given_only else f.default
            if given_only:
                shown = ("on" if f.default else "off") if kind is bool else f.default
                help_text = f"{help_text}  [default: {shown}]"
            extra = {"show_default": False} if given_only else {}
            if kind is bool:
                command = click.option(f"--{flag}/--no-{flag}", f.name, default=default, help=help_text,
                                       **extra)(command)
            else:
                command = click.option(f"--{flag}", f.name, type=_click_type(f, kind), default=default,
                                       help=help_text, metavar=f.metadata.get("metavar"), **extra)(command)
        return command
    return decorate
