"""Typed options: build a dataclass from a TOML table, checking every key and type.

Used for the core row settings and for every plugin's options dataclass, so that both
reject a misspelt key with a did-you-mean and a wrong type with the expected one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from tunerkit.errors import UserError


def did_you_mean(word: str, choices) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError``. ints pass as floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check_value(value, arg)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        return [check_value(v, arg) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise TypeError
        return value
    raise TypeError(f"unsupported option type {tp!r}")


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def build(cls: type, values: dict, *, file: str | None = None, table: str | None = None):
    """Instantiate the options dataclass ``cls`` from ``values`` (the TOML ``table``), checking everything."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown option '{key}'", file=file, table=table, key=key,
                            hint=did_you_mean(key, fields) or f"known options: {', '.join(fields) or 'none'}")
        try:
            kwargs[key] = check_value(value, hints[key])
        except TypeError:
            raise UserError(f"expected {type_name(hints[key])}, got {type(value).__name__} {value!r}",
                            file=file, table=table, key=key, hint=field_help(fields[key]) or None) from None
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise UserError(str(err), file=file, table=table) from None
    except ValueError as err:  # __post_init__ range checks
        raise UserError(str(err), file=file, table=table) from None
    return obj


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) of every option, for ``tunerkit list`` and the docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((f.name, type_name(hints[f.name]), default, field_help(f)))
    return rows


def option(default: Any, help: str, *, added_later: bool = False, **kwargs) -> Any:
    """``dataclasses.field`` with a help text; lists and dicts get a factory.

    ``added_later``: a field introduced after results were stored. At its default it is left
    out of a row's identity (``Row.config``), so rows recorded before it existed still match
    their config hash and ``--resume`` keeps skipping them."""
    metadata = {"help": help, "added_later": added_later}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def identity(obj) -> dict:
    """A dataclass as a dict for a row's identity: ``added_later`` fields at their default left out."""
    out = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if f.metadata.get("added_later") and out[f.name] == _default_of(f):
            del out[f.name]
    return out


def left_out_defaults(cls) -> dict:
    """What :func:`identity` leaves out of a ``cls`` at its default: the ``added_later`` fields
    and their defaults, so a reader of stored configs can show them."""
    return {f.name: _default_of(f) for f in dataclasses.fields(cls) if f.metadata.get("added_later")}


def _default_of(f: dataclasses.Field) -> Any:
    """A field's default, built by its factory where it has one (list and dict options)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
