"""The settings table, from the ``Settings`` model: every field, its variable, type and default.

The model is the one source: a field added without a ``description`` fails the generator, and a
default changed in code changes the table (and ``test_defaults_match_the_documentation`` reads the
table back as environment variables).
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tools.docsgen.markdown import code, table
from worker.core.settings import SentinelAddress, Settings, TimeLimits

# Models read from one variable, named as the reader writes them.
_SPELLED: dict[Any, str] = {SentinelAddress: "`host:port`", TimeLimits: "`{soft, hard}`"}

UNSET = "unset"
EMPTY = "empty"

_BOUNDS: tuple[tuple[type[Any], str, str], ...] = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def env_name(field: str) -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def type_name(annotation: Any) -> str:
    """The type as a reader writes the variable: ``a | b`` for choices, ``list`` comma-separated."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        named = [type_name(arg) for arg in args if arg is not type(None)]
        return " | ".join(named) + (", optional" if type(None) in args else "")
    if origin is typing.Literal:
        return " | ".join(code(str(arg)) for arg in args)
    if origin is list:
        return f"comma-separated list of {type_name(args[0])}"
    if origin is dict:
        return f"JSON object of {type_name(args[1])}"
    if annotation in _SPELLED:
        return _SPELLED[annotation]
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: FieldInfo) -> str:
    found = []
    for meta in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(meta, kind):
                found.append(f"{sign} {getattr(meta, attribute)}")
    return f" ({', '.join(found)})" if found else ""


def env_value(value: Any) -> str:
    """A default written as its environment variable would spell it."""
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) if value else EMPTY
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def default_of(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def rows() -> list[list[str]]:
    found = []
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no description= (the docs are made from it)")
        default = env_value(default_of(field))
        found.append(
            [
                code(env_name(name)),
                type_name(field.annotation) + bounds(field),
                default if default in (UNSET, EMPTY) else code(default),
                field.description,
            ]
        )
    return found


def render() -> str:
    return table(["variable", "type", "default", "meaning"], rows())
