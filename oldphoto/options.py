"""Command-line options derived from the typed configs: each field becomes --field-name with the field's
description, choices and default, so that a field added to a config appears on the command line
without a second copy of it here. A tuple or list of values is one flag, comma-separated. Fields that do
not fit one flag (mappings, nested configs) are set in a deployment's parameters instead."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def _loader(model: type[BaseModel]):
    """A config given by name or file on the command line (its model's load())."""
    def load(text: str) -> BaseModel:
        try:
            return model.load(text)
        except (ValueError, OSError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    load.__name__ = model.__name__
    return load


def _argument(annotation: Any) -> tuple[Any, tuple | None] | None:
    """(type converter, choices) for a field's annotation; None where no single flag fits."""
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        if len(kinds) != 1:
            return None
        annotation = kinds[0]
    if get_origin(annotation) is Annotated:  # a constrained type: pydantic checks the constraint
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        return type(choices[0]), choices
    if annotation in (bool, int, float, str, Path):
        return annotation, None
    if get_origin(annotation) is tuple and len(args := get_args(annotation)) == 2 and args[1] is Ellipsis:
        return _comma_separated(args[0]), None
    if get_origin(annotation) is list and len(args := get_args(annotation)) == 1 and args[0] in (int, float, str):
        return _comma_separated(args[0]), None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and hasattr(annotation, "load"):
        return _loader(annotation), None
    return None


def _comma_separated(item: type):
    """A tuple of values given as one flag: --mask-scales 2,4 (nothing after the '=': none)."""
    def values(text: str) -> tuple:
        try:
            return tuple(item(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None
    values.__name__ = f"comma-separated {item.__name__} values"
    return values


def _shown(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, BaseModel):  # a config of its own: the name of the preset it is
        presets = getattr(sys.modules[type(value).__module__], "PRESETS", {})
        return next((name for name, preset in presets.items() if preset == value), "built in")
    return "none" if value is None else str(value)


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel], title: str, *,
                only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> None:
    """A group of options, one per field of model (or of those named in only)."""
    group = parser.add_argument_group(title)
    for name, field in model.model_fields.items():
        if name in exclude or (only is not None and name not in only):
            continue
        argument = _argument(field.annotation)
        if argument is None:
            continue
        converter, choices = argument
        flag = "--" + name.replace("_", "-")
        text = f"{field.description or name.replace('_', ' ')} (default: {_shown(_default(field))})"
        if converter is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=name, type=converter, choices=choices, default=None, help=text,
                               metavar=None if choices else name.upper())


def _default(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True)


def option_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of model given on the command line (the config's defaults stand for the rest)."""
    return {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}
