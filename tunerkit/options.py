"""Typed options: build a dataclass from a TOML table, checking every key and type.

Used for the core row settings and for every plugin's options dataclass, so that both
reject a misspelt key with a did-you-mean and a wrong type with the expected one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
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


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric option, kept in its field metadata (:func:`option`)."""

    min: float | None = None  # value >= min
    max: float | None = None  # value <= max
    gt: float | None = None   # value > gt
    lt: float | None = None   # value < lt

    def holds(self, value: float) -> bool:
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.gt is None or value > self.gt) and (self.lt is None or value < self.lt))

    def text(self) -> str:
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.min), (">", self.gt), ("<=", self.max),
                                                      ("<", self.lt)) if bound is not None]
        return " and ".join(parts)


def field_range(f: dataclasses.Field) -> Range | None:
    return f.metadata.get("range")


def choices_of(tp: Any) -> list:
    """The allowed values of a ``Literal`` type (also inside ``X | None``), else []."""
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [c for arg in typing.get_args(tp) for c in choices_of(arg)]
    return []


def check_field(cls: type, key: str, value: Any, *, file: str | None = None, table: str | None = None) -> Any:
    """One value of the options dataclass ``cls``, checked for its name, type and range: the
    one place a recipe value is checked, so every layer gets the same one-line messages."""
    fields = _fields(cls)
    if key not in fields:
        raise UserError(f"unknown option '{key}'", file=file, table=table, key=key,
                        hint=did_you_mean(key, fields) or f"known options: {', '.join(fields) or 'none'}")
    tp = option_types(cls)[key]
    try:
        value = check_value(value, tp)
    except TypeError:
        near = did_you_mean(value, [c for c in choices_of(tp) if isinstance(c, str)]) if isinstance(value, str) else None
        raise UserError(f"expected {type_name(tp)}, got {type(value).__name__} {value!r}",
                        file=file, table=table, key=key, hint=near or field_help(fields[key]) or None) from None
    _check_number(value, field_range(fields[key]), file=file, table=table, key=key)
    return value


@functools.cache
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


@functools.cache
def option_types(cls: type) -> dict[str, Any]:
    """Each option's type annotation, resolved (the dataclasses use postponed annotations)."""
    return typing.get_type_hints(cls)


def _check_number(value: Any, bounds: Range | None, **where) -> None:
    """NaN and inf mean nothing for any option; a field's :class:`Range` says what else is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    allowed = f"allowed: {bounds.text()}" if bounds else None
    if not math.isfinite(value):
        raise UserError(f"{value} is not a finite number", hint=allowed, **where)
    if bounds is not None and not bounds.holds(value):
        raise UserError(f"{value!r} is out of range", hint=allowed, **where)


def build(cls: type, values: dict, *, file: str | None = None, table: str | None = None,
          where: dict[str, str] | None = None):
    """Instantiate the options dataclass ``cls`` from ``values``, checking everything.

    ``where`` names the table each key was written in (a recipe merges several), so an error
    points there; keys not in it are located at ``table``."""
    where = where or {}
    kwargs = {key: check_field(cls, key, value, file=file, table=where.get(key, table))
              for key, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a required field is missing; __post_init__'s cross-field checks
        raise UserError(str(err), file=file, table=table) from None


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type with its range, default, help) of every option, for ``tunerkit list`` and the docs."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        bounds = field_range(f)
        kind = type_name(hints[f.name]) + (f", {bounds.text()}" if bounds else "")
        rows.append((f.name, kind, default, field_help(f)))
    return rows


def option(default: Any, help: str, *, added_later: bool = False, min: float | None = None,
           max: float | None = None, gt: float | None = None, lt: float | None = None, **kwargs) -> Any:
    """``dataclasses.field`` with a help text and, for a number, its allowed range; lists and
    dicts get a factory.

    ``min``/``max`` are inclusive bounds, ``gt``/``lt`` exclusive ones; :func:`build` refuses a
    value outside them (and NaN or inf for any number) with the range in the message.
    ``added_later``: a field introduced after results were stored. At its default it is left
    out of a row's identity (``Row.config``), so rows recorded before it existed still match
    their config hash and ``--resume`` keeps skipping them."""
    bounds = Range(min, max, gt, lt)
    metadata = {"help": help, "added_later": added_later, "range": bounds if bounds != Range() else None}
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
