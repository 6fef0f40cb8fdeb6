"""TOML recipes: ``[recipe]``, ``[defaults]``, ``[profiles.NAME]`` and ``[[row]]``.

A recipe is read with the standard library's ``tomllib`` and resolved into
:class:`Row` objects before anything runs. Precedence, lowest first:
``[defaults]`` < ``[[row]]`` < the chosen ``[profiles.NAME]`` (a profile describes the
machine, e.g. "on CPU use the small real model", so it wins over rows). A list given
where the setting takes one value is a sweep and expands into one row per value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunerkit import options as opts
from tunerkit.errors import UserError
from tunerkit.plugins import check_combination, get_plugin, registry
from tunerkit.settings import Settings

TOP_LEVEL = ("recipe", "defaults", "profiles", "row")
RECIPE_KEYS = ("name", "title", "description", "seed_table", "gpu_profile", "default_profile")
ROW_ONLY_KEYS = ("name", "plugins", "reference", "note", "pending", "profiles")
PROFILE_ONLY_KEYS = ("only", "description")
SETTING_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
SETTING_TYPES = typing.get_type_hints(Settings)


@dataclass
class Row:
    """One fully resolved row: what runs, with which settings and plugin options."""

    name: str
    base_name: str
    settings: Settings
    plugins: list[str]
    options: dict[str, Any]
    sweep: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    recipe: str = ""
    profile: str | None = None
    #: set for a row of the seed whose plugin does not exist yet: reported as "not implemented"
    pending: str | None = None
    #: speed = "max": the switches added and the ones refused, with the reason (tunerkit.fast_mode)
    fast_mode: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict:
        """Everything that decides the row's outcome, as plain JSON-able data."""
        return {
            "name": self.name,
            "settings": opts.identity(self.settings),
            "plugins": list(self.plugins),
            "options": {name: opts.identity(o) for name, o in self.options.items()},
            **({"fast_mode": self.fast_mode} if self.fast_mode else {}),
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Recipe:
    path: Path
    name: str
    title: str
    description: str
    profile: str | None
    profiles: list[str]
    rows: list[Row]
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict:
    """``["token_budget=32768", "lora.rank=16"]`` -> ``{"token_budget": 32768, "lora": {"rank": 16}}``.

    A value is read as a TOML value (numbers, booleans, lists, quoted strings); anything
    that is not one is taken as a bare string, so ``--set model=qwen-7b-chat`` works.
    """
    out: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE, got {pair!r}", key="--set", hint="e.g. --set token_budget=32768")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        table, dot, option = key.partition(".")
        if dot:
            out.setdefault(table, {})[option] = value
        else:
            out[key] = value
    return out


def read_toml(path: Path) -> dict:
    if not path.exists():
        raise UserError("recipe file not found", file=str(path), hint="check the path; recipes live in recipes/")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"malformed TOML: {err}", file=str(path), hint="check quotes, brackets and '=' signs") from None


def profile_names(data: dict) -> list[str]:
    return list((data.get("profiles") or {}).keys())


def load_recipe(path: str | Path, profile: str | None = None, *, check_files: bool = True,
                overrides: dict | None = None, select: list[str] | None = None) -> Recipe:
    """Parse, resolve and validate a recipe; raise :class:`UserError` on any bad input.

    ``overrides`` (``tunerkit run --set``) are settings or plugin tables applied to every
    row after the profile, so they win over it; each row's recorded config shows them.
    ``select`` (``tunerkit run --only``) keeps the rows of those names (base names or sweep
    points). Every row is still parsed and type-checked, but only the kept ones go through
    the checks that look at this machine (files, fit, installed packages): a row that needs
    deepspeed must not stop a one-GPU run of its neighbours.
    """
    path = Path(path)
    file = str(path)
    data = read_toml(path)
    for key in data:
        if key not in TOP_LEVEL:
            raise UserError(f"unknown top-level table '{key}'", file=file, key=key,
                            hint=opts.did_you_mean(key, TOP_LEVEL) or f"allowed: {', '.join(TOP_LEVEL)}")
    meta = data.get("recipe", {})
    _expect_table(meta, file, "recipe")
    for key in meta:
        if key not in RECIPE_KEYS:
            raise UserError(f"unknown key '{key}'", file=file, table="recipe", key=key,
                            hint=opts.did_you_mean(key, RECIPE_KEYS) or f"allowed: {', '.join(RECIPE_KEYS)}")
    defaults = data.get("defaults", {})
    _expect_table(defaults, file, "defaults")
    profiles = data.get("profiles", {})
    _expect_table(profiles, file, "profiles")
    if profile is not None and profile not in profiles:
        raise UserError(f"no profile '{profile}'", file=file, table="profiles", key=profile,
                        hint=opts.did_you_mean(profile, profiles) or f"profiles here: {', '.join(profiles) or 'none'}")
    prof = dict(profiles.get(profile, {})) if profile else {}
    _expect_table(prof, file, f"profiles.{profile}")
    raw_rows = data.get("row", [])
    if not isinstance(raw_rows, list) or not raw_rows:
        raise UserError("a recipe needs at least one [[row]]", file=file, table="row")

    only = prof.pop("only", None)
    prof.pop("description", None)
    _check_section_keys(defaults, file, "defaults", allowed_extra=())
    _check_section_keys(prof, file, f"profiles.{profile}", allowed_extra=())
    overrides = overrides or {}
    _check_section_keys(overrides, file, "--set", allowed_extra=())

    rows: list[Row] = []
    seen_names: set[str] = set()
    for index, raw in enumerate(raw_rows):
        table = f"row {index + 1}"
        _expect_table(raw, file, table)
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise UserError("every [[row]] needs a name", file=file, table=table, key="name")
        table = f"row '{name}'"
        if only is not None and name not in only:
            continue
        row_prof = _row_profile(raw, profile, profiles, file=file, table=table)
        late = _merged(prof, row_prof, overrides)  # later layers win: profile, the row's own, --set
        for row in _resolve_row(raw, defaults, late, file=file, table=table):
            row.recipe, row.profile = str(path), profile
            if row.name in seen_names:
                raise UserError(f"duplicate row name '{row.name}'", file=file, table=table, key="name",
                                hint="give every row (and sweep point) a distinct name")
            seen_names.add(row.name)
            rows.append(row)
    if only is not None:
        missing = [n for n in only if not any(r.base_name == n for r in rows)]
        if missing:
            raise UserError(f"'only' names rows that do not exist: {', '.join(missing)}", file=file,
                            table=f"profiles.{profile}", key="only")
    if select is not None:
        unknown = [n for n in select if not any(r.base_name == n or r.name == n for r in rows)]
        if unknown:
            raise UserError(f"--only names unknown rows: {', '.join(unknown)}", file=file,
                            hint=f"rows: {', '.join(sorted({r.base_name for r in rows}))}")
        rows = [r for r in rows if r.base_name in select or r.name in select]
    recipe = Recipe(path=path, name=meta.get("name", path.stem), title=meta.get("title", path.stem),
                    description=meta.get("description", ""), profile=profile, profiles=list(profiles),
                    rows=rows, meta=meta)
    if check_files:
        validate_rows(recipe)
    return recipe


def _row_profile(raw: dict, profile: str | None, profiles: dict, *, file: str, table: str) -> dict:
    """A row's own settings for one profile (``[row.profiles.cpu]``), checked like a profile table.

    For what only one row needs under a profile, where the profile's value would be wrong
    for it (a packing row's batch on the CPU, say).
    """
    own = raw.get("profiles", {})
    _expect_table(own, file, f"{table}.profiles")
    for name in own:
        if name not in profiles:
            raise UserError(f"no profile '{name}' in [profiles]", file=file, table=f"{table}.profiles", key=name,
                            hint=opts.did_you_mean(name, profiles) or f"profiles here: {', '.join(profiles) or 'none'}")
    section = dict(own.get(profile, {})) if profile else {}
    _expect_table(section, file, f"{table}.profiles.{profile}")
    _check_section_keys(section, file, f"{table}.profiles.{profile}", allowed_extra=())
    return section


def _merged(*layers: dict) -> dict:
    """Later layers win; a plugin's option table merges option by option."""
    plugins = registry()
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            merge = key in plugins and isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = {**out[key], **value} if merge else value  # a setting (e.g. mix = {}) replaces
    return out


def _expect_table(value: Any, file: str, table: str) -> None:
    if not isinstance(value, dict):
        raise UserError(f"expected a table, got {type(value).__name__}", file=file, table=table)


def _check_section_keys(section: dict, file: str, table: str, allowed_extra: tuple[str, ...]) -> None:
    """Keys of [defaults]/[profiles.X]: settings, or option tables named after an installed plugin."""
    plugins = registry()
    for key, value in section.items():
        if key in allowed_extra:
            continue
        if key in SETTING_FIELDS:
            _check_type(value, SETTING_TYPES[key], SETTING_FIELDS[key], file, table, key)
            continue
        if isinstance(value, dict) and key in plugins:
            cls = get_plugin(key, file=file, table=table, key=key)
            hints = typing.get_type_hints(cls.Options)
            fields = {f.name: f for f in dataclasses.fields(cls.Options)}
            for opt, v in value.items():
                if opt not in fields:
                    raise UserError(f"unknown option '{opt}'", file=file, table=f"{table}.{key}", key=opt,
                                    hint=opts.did_you_mean(opt, fields) or f"known options: {', '.join(fields)}")
                _check_type(v, hints[opt], fields[opt], file, f"{table}.{key}", opt)
            continue
        raise UserError(f"unknown key '{key}'", file=file, table=table, key=key,
                        hint=opts.did_you_mean(key, [*SETTING_FIELDS, *plugins, *allowed_extra])
                        or "run 'tunerkit list' for settings and plugins")


def _check_type(value: Any, tp: Any, fld: dataclasses.Field, file: str, table: str, key: str) -> None:
    """Type-check one setting (each value of a sweep) where it is written, so errors name that table."""
    for v in (value if _is_sweep(value, tp) else [value]):
        try:
            opts.check_value(v, tp)
        except TypeError:
            raise UserError(f"expected {opts.type_name(tp)}, got {type(v).__name__} {v!r}", file=file, table=table,
                            key=key, hint=opts.field_help(fld) or None) from None


def _is_sweep(value: Any, tp: Any) -> bool:
    if not isinstance(value, list):
        return False
    takes_list = _type_takes_list(tp)
    if not takes_list:
        return True
    return bool(value) and all(isinstance(v, list) for v in value)


def _type_takes_list(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_takes_list(a) for a in typing.get_args(tp))
    return tp is Any


def _resolve_row(raw: dict, defaults: dict, prof: dict, *, file: str, table: str) -> list[Row]:
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise UserError("plugins must be a list of plugin names", file=file, table=table, key="plugins")
    pending = raw.get("pending")
    if pending is not None:
        if not isinstance(pending, str):
            raise UserError("pending must be a string saying what is missing", file=file, table=table, key="pending")
        # The row's plugins may not exist yet: keep it (reported "not implemented"), resolve nothing.
        settings = {k: v for k, v in {**defaults, **raw, **prof}.items() if k in SETTING_FIELDS}
        settings = {k: (v[0] if _is_sweep(v, SETTING_TYPES[k]) else v) for k, v in settings.items()}
        return [Row(name=raw["name"], base_name=raw["name"], settings=opts.build(Settings, settings, file=file, table=table),
                    plugins=list(plugins), options={}, reference=dict(raw.get("reference", {})),
                    note=raw.get("note", ""), pending=pending)]
    for p in plugins:
        get_plugin(p, file=file, table=table)
    check_combination(plugins, file=file, table=table)

    reference = raw.get("reference", {})
    _expect_table(reference, file, f"{table}.reference")
    note = raw.get("note", "")

    # Split the row into settings and plugin tables, rejecting anything else.
    row_settings, row_tables = {}, {}
    for key, value in raw.items():
        if key in ROW_ONLY_KEYS:
            continue
        if key in SETTING_FIELDS:
            _check_type(value, SETTING_TYPES[key], SETTING_FIELDS[key], file, table, key)
            row_settings[key] = value
        elif key in plugins:
            _expect_table(value, file, f"{table}.{key}")
            row_tables[key] = value
        elif key in registry() and isinstance(value, dict):
            raise UserError(f"options for plugin '{key}' but plugins = {plugins!r} does not list it",
                            file=file, table=table, key=key, hint=f"add '{key}' to plugins or remove the table")
        else:
            raise UserError(f"unknown key '{key}'", file=file, table=table, key=key,
                            hint=opts.did_you_mean(key, [*SETTING_FIELDS, *plugins, *ROW_ONLY_KEYS])
                            or "run 'tunerkit list' for settings and plugins")

    def layered(getter):
        merged = {}
        for layer in (defaults, row_settings, prof):
            merged.update(getter(layer))
        return merged

    settings = layered(lambda layer: {k: v for k, v in layer.items() if k in SETTING_FIELDS})
    tables = {p: {**defaults.get(p, {}), **row_tables.get(p, {}), **prof.get(p, {})} for p in plugins}

    # Collect sweep axes: (kind, plugin or None, key, values).
    axes = []
    for key, value in settings.items():
        if _is_sweep(value, SETTING_TYPES[key]):
            axes.append((None, key, value))
    for p, tbl in tables.items():
        hints = typing.get_type_hints(get_plugin(p).Options)
        for key, value in tbl.items():
            if key in hints and _is_sweep(value, hints[key]):
                axes.append((p, key, value))
    for plugin, key, values in axes:
        if not values:
            raise UserError("an empty list sweeps over nothing", file=file, table=table, key=key)

    rows = []
    for combo in itertools.product(*[values for _, _, values in axes]) if axes else [()]:
        point_settings = dict(settings)
        point_tables = {p: dict(t) for p, t in tables.items()}
        sweep = {}
        for (plugin, key, _), value in zip(axes, combo):
            if plugin is None:
                point_settings[key] = value
                sweep[key] = value
            else:
                point_tables[plugin][key] = value
                sweep[f"{plugin}.{key}"] = value
        s = opts.build(Settings, point_settings, file=file, table=table)
        built = {p: opts.build(get_plugin(p).Options, point_tables[p], file=file, table=f"{table}.{p}")
                 for p in plugins}
        name = raw["name"]
        if sweep:
            name += "[" + ",".join(f"{k}={_short(v)}" for k, v in sweep.items()) + "]"
        rows.append(Row(name=name, base_name=raw["name"], settings=s, plugins=list(plugins), options=built,
                        sweep=sweep, reference=dict(reference), note=note))
    from tunerkit.fast_mode import apply_fast_mode

    return [apply_fast_mode(r) for r in rows]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(map(str, value))
    return str(value)


def validate_rows(recipe: Recipe) -> None:
    """Checks that need more than types: files exist, models fit, plugins agree."""
    from tunerkit.validation import validate_row

    for row in recipe.rows:
        if row.pending is None:
            validate_row(row, file=str(recipe.path))


def make_row(name: str = "test", plugins: list[str] | None = None, profile: str | None = None, **table) -> Row:
    """A resolved Row built in code (tests, notebooks): ``make_row("r", ["lora"], lora={"rank": 4}, model="tiny-llama")``."""
    raw = {"name": name, "plugins": list(plugins or []), **table}
    rows = _resolve_row(raw, {}, {}, file="<code>", table=f"row '{name}'")
    if len(rows) != 1:
        raise ValueError("make_row builds one row; sweeps belong in a recipe")
    rows[0].recipe, rows[0].profile = "<code>", profile
    return rows[0]
