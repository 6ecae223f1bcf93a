"""What ``fedflow apps NAME`` prints: an app's summary line and its parameters.

Everything comes from the installed package — the app's docstring and its msgspec ``Params``
struct read with ``msgspec.inspect`` — so the description is right for the installed version and
needs no ``docs/`` folder (which does not ship with a wheel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from fedflow.apps import get_app

__all__ = ["ParamInfo", "app_parameters", "describe_app", "type_name"]


@dataclass(frozen=True)
class ParamInfo:
    """One parameter: its name, its type as a study file spells it, and its default."""

    name: str
    type: str
    required: bool
    default: Any = None


def type_name(info: msgspec.inspect.Type) -> str:
    """Return a msgspec type as TOML users read it: ``string``, ``list of string``,
    ``"a" | "b"``, ``integer or number`` … (an optional value's ``None`` is left out)."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.StrType):
        return "string"
    if isinstance(info, inspect.BoolType):
        return "boolean"
    if isinstance(info, inspect.IntType):
        return "integer"
    if isinstance(info, inspect.FloatType):
        return "number"
    if isinstance(info, inspect.NoneType):
        return "none"
    if isinstance(info, inspect.LiteralType):
        return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in info.values)
    if isinstance(info, (inspect.ListType, inspect.SetType, inspect.FrozenSetType)):
        return f"list of {type_name(info.item_type)}"
    if isinstance(info, inspect.VarTupleType):
        return f"list of {type_name(info.item_type)}"
    if isinstance(info, inspect.DictType):
        return f"table of {type_name(info.key_type)} to {type_name(info.value_type)}"
    if isinstance(info, inspect.UnionType):
        # None in a union means "not set": the default column says so
        return " or ".join(type_name(t) for t in info.types if not isinstance(t, inspect.NoneType))
    if isinstance(info, inspect.AnyType):
        return "any"
    return type(info).__name__.removesuffix("Type").lower()


def app_parameters(app: Any) -> list[ParamInfo]:
    """Return the parameters of an app (instance or class), in declaration order."""
    info = msgspec.inspect.type_info(app.Params)
    assert isinstance(info, msgspec.inspect.StructType)
    params = []
    for field in info.fields:
        if field.required:
            default: Any = None
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            default = field.default
        params.append(ParamInfo(field.name, type_name(field.type), field.required, default))
    return params


def _toml(value: Any) -> str:
    """Return a default as it would be written in a study file (``none``: not set)."""
    if value is None:
        return "none (not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def summary_line(app: Any) -> str:
    """Return the first line of the app's docstring ('' when it has none)."""
    doc = (type(app).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def describe_app(name: str) -> str:
    """Return the text ``fedflow apps NAME`` prints: name, summary, parameters and defaults.

    Raises AppError for an unknown app (naming the closest built-in one).
    """
    app = get_app(name)
    params = app_parameters(app)
    lines = [f"{name} — {summary_line(app)}".rstrip(" —"), ""]
    if app.reference:
        lines += [f"centralized twin (--compare): {app.reference}", ""]
    if not params:
        lines.append("no parameters")
    else:
        lines.append("parameters ([params] in the study file):")
        width = max(len(p.name) for p in params)
        kinds = [p.type for p in params]
        type_width = min(max(len(k) for k in kinds), 40)
        for p in params:
            default = "required" if p.required else f"default {_toml(p.default)}"
            lines.append(f"  {p.name:<{width}}  {p.type:<{type_width}}  {default}")
    return "\n".join(lines) + "\n"
