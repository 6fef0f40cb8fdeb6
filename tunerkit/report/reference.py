"""ms-swift's published numbers for one recorded row.

A row's ``reference`` table is either flat (``{ samples_per_s = 4.31, memory_gib = 27.74 }``)
or keyed by a swept setting, so that one sweep row carries ms-swift's numbers for every
point::

    reference.max_length.512  = { samples_per_s = 9.88, memory_gib = 6.99 }
    reference.max_length.1024 = { samples_per_s = 9.90, memory_gib = 10.71 }

A key naming a setting (``max_length``) or a plugin option (``"lora.rank"``) whose value is a
table selects the entry for the row's own value; keyed tables may nest (model, then
max_length). Everything else is taken as it is.
"""

from __future__ import annotations

from typing import Any

from tunerkit.options import left_out_defaults
from tunerkit.settings import Settings


def axis_key(value: Any) -> str:
    """How a setting's value is spelt as a TOML key: 512, true, 5e-05, q_proj+v_proj."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return str(value)


def point_values(config: dict) -> dict[str, Any]:
    """A recorded row's settings and plugin options, plugin options as ``plugin.option``.
    Settings its identity left out at their default (``added_later``) are given that default."""
    values = {**left_out_defaults(Settings), **(config.get("settings") or {})} if config.get("settings") else {}
    for plugin, opts in (config.get("options") or {}).items():
        for key, value in (opts or {}).items():
            values[f"{plugin}.{key}"] = value
    return values


def resolve_reference(reference: dict | None, config: dict) -> dict:
    """The flat reference of the row recorded with ``config`` (see the module docstring)."""
    return _resolve(reference or {}, point_values(config))


def _resolve(reference: dict, values: dict[str, Any]) -> dict:
    out: dict[str, Any] = {}
    for key, value in reference.items():
        if key in values and isinstance(value, dict):
            entry = value.get(axis_key(values[key]))
            if entry is None:
                entry = value.get(str(values[key]))
            if isinstance(entry, dict):
                out.update(_resolve(entry, values))
        else:
            out[key] = value
    return out


def unresolved_axes(reference: dict, config: dict) -> list[str]:
    """Keyed tables that found no entry for this row (a typo in a recipe's reference)."""
    values = point_values(config)
    missing = []

    def walk(ref: dict) -> None:
        for key, value in ref.items():
            if key in values and isinstance(value, dict):
                entry = value.get(axis_key(values[key]), value.get(str(values[key])))
                if isinstance(entry, dict):
                    walk(entry)
                else:
                    missing.append(f"{key}={axis_key(values[key])}")

    walk(reference or {})
    return missing
