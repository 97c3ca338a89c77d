"""A job's argument parser generated from the fields of an options dataclass, and the dataclass built
back from the parsed arguments (its own ``__post_init__`` validates them, once).

A field becomes ``--field-name`` when its metadata has ``help``; fields without it are not options.
Metadata may also give ``choices``, ``type`` (a parser of the text, when the annotation is no plain
``int``/``float``/``str``), ``const`` (the value of the flag given without one: ``--x`` or ``--x VALUE``), and
``required`` (``False`` for a field without default that the job
may fill in itself). A ``bool`` field is ``--x`` (``store_true``) when its default is
``False``, ``--no-x`` (``store_false``) when it is ``True``. A help without ``(default: ...)`` gets the
field's default appended (unless ``None``); ```name``` in a help is shown as the flag ``--name``.
A number that is NaN or infinite (``float`` parses ``nan``, ``inf``) is refused for every field, before
the dataclass is built.
"""

# Hand-written rather than simple-parsing or tyro: ~50 lines over dataclasses.fields keep the flags,
# help layout and bool spellings exactly as the jobs had them, without a new dependency.

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from typing import Any, TypeVar

from san.errors import OptionError

from .cli import flag

T = TypeVar("T")

_OPTION = re.compile(r"`(\w+)`")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of dataclass ``cls`` whose metadata has ``help`` (see the module doc)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        text = _OPTION.sub(lambda match: flag(match[1]), meta["help"])
        name = flag(field.name)
        default = None if field.default is dataclasses.MISSING else field.default
        kind = _plain_type(hints[field.name])
        if kind is bool:
            negated = "--no-" + name.removeprefix("--")
            action = "store_false" if default else "store_true"
            parser.add_argument(negated if default else name, dest=field.name, action=action, help=text)
            continue
        options: dict[str, Any] = {"dest": field.name, "type": meta.get("type", kind), "help": text}
        if "choices" in meta:
            options["choices"] = meta["choices"]
        if "const" in meta:
            options |= {"nargs": "?", "const": meta["const"]}
        if field.default is dataclasses.MISSING and meta.get("required", True):
            options["required"] = True
        else:
            options["default"] = default
            if default is not None and "(default" not in text:
                options["help"] += " (default: %(default)s)"
        parser.add_argument(name, **options)


def dataclass_from_args(cls: type[T], arguments: argparse.Namespace, **overrides: Any) -> T:
    """``cls`` with each of its command-line fields from ``arguments``, and ``overrides`` on top.

    Raises:
        OptionError: a value is (or holds) a NaN or infinite number, naming the option.
    """
    given = {f.name: getattr(arguments, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}
    values = {**given, **overrides}
    for name, value in values.items():
        numbers = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            raise OptionError(f"`{name}` must be a finite number, got {value}")
    return cls(**values)


def _plain_type(annotation: Any) -> Any:
    """``int`` of ``int | None`` (the parser's ``type``); other annotations as they are."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation
