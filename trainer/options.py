"""Click options made from the config's fields: one name, default, choice list and help each.

`run_options` gives `alextrain run` one flag per setting (default None, so a config file or a
resumed run's config.json can fill what the user leaves out; the help shows the real default).
`option("device")` gives another command the same flag as `run`'s, e.g. `eval --device`.
Importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field
from typing import Any

import click

from pipeline.config import ConfigError, default, kinds, parse_ints
from trainer.config import FIELDS


class _Ints(click.ParamType):
    """A comma-separated list of whole numbers, e.g. --lr-steps 30,60,80."""

    name = "N,N,..."

    def __init__(self, f: Field):
        self.field = f

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        if isinstance(value, tuple):
            return value
        try:
            return parse_ints(self.field, value)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


def _type(f: Field) -> Any:
    names = kinds(f)
    choices = f.metadata.get("choices")
    if choices and not all(isinstance(c, int) for c in choices):
        return click.Choice(choices)
    if names[0].startswith("tuple"):
        return _Ints(f)
    return {"int": int, "float": float}.get(names[0], str)


def _help(f: Field, show_default: bool) -> str:
    text = f.metadata["help"]
    value = default(f)
    if show_default and value not in (None, "") and "[default:" not in text:
        shown = str(value).lower() if isinstance(value, bool) else value
        text += f" [default: {shown}]"
    return text


def option(name: str, *, none_default: bool = False, required: bool = False) -> Callable:
    """The click option of setting `name` (flat key). `none_default`: default None (the caller
    fills in from a config file, a saved run or the field's default; the help shows the real one)."""
    f = FIELDS[name]
    flag = "--" + name.replace("_", "-")
    value = None if none_default or required else default(f)
    if kinds(f)[0] == "bool":
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=value, help=_help(f, True))
    kind = _type(f)
    return click.option(
        flag,
        name,
        type=kind,
        metavar=_metavar(f),
        default=value,
        required=required,
        show_default=not none_default and value not in (None, ""),
        help=_help(f, none_default),
    )


def _metavar(f: Field) -> str | None:
    """[1|2] for a choice of numbers: typed as int, so a wrong one is refused by the config's own
    one-line rule (naming flag and key) rather than by click's usage text."""
    choices = f.metadata.get("choices")
    if choices and all(isinstance(c, int) for c in choices):
        return "[" + "|".join(map(str, choices)) + "]"
    return None


def run_options(fn: Callable) -> Callable:
    """Every setting as a flag of `alextrain run`, in the config's order."""
    for name in reversed(list(FIELDS)):
        fn = option(name, none_default=True)(fn)
    return fn
