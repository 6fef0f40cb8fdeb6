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
from tunerkit.plugins import check_combination, get_plugin, registry, settings_not_used
from tunerkit.settings import Settings

TOP_LEVEL = ("recipe", "defaults", "profiles", "row")
RECIPE_KEYS = ("name", "title", "description", "seed_table", "gpu_profile", "default_profile")
ROW_ONLY_KEYS = ("name", "plugins", "reference", "note", "pending", "profiles")
SETTING_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


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
    #: set for an ms-swift row whose plugin does not exist yet: reported as "not implemented"
    pending: str | None = None
    #: speed = "max": the switches added and the ones refused, with the reason (tunerkit.fast_mode)
    fast_mode: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict:
        """Everything that decides the row's outcome, as plain JSON-able data; ``not_used``
        names the settings a plugin replaced (kept for the record, left out of the hash)."""
        out = {
            "name": self.name,
            "settings": opts.identity(self.settings),
            "plugins": list(self.plugins),
            "options": {name: opts.identity(o) for name, o in self.options.items()},
            **({"fast_mode": self.fast_mode} if self.fast_mode else {}),
        }
        not_used = settings_not_used(self.plugins)
        if not_used:
            out["not_used"] = not_used
        return out

    def config_hash(self) -> str:
        identity = {k: v for k, v in self.config().items() if k != "not_used"}
        blob = json.dumps(identity, sort_keys=True, default=str).encode()
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
    """The recipe's TOML, or a one-line :class:`UserError` for a file that is not a TOML text file."""
    if not path.exists():
        raise UserError("recipe file not found", file=str(path), hint="check the path; recipes live in recipes/")
    if path.is_dir():
        raise UserError("is a directory, not a recipe file", file=str(path), hint="name a .toml file")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"malformed TOML: {err}", file=str(path), hint="check quotes, brackets and '=' signs") from None
    except UnicodeDecodeError as err:
        raise UserError(f"not a UTF-8 text file (byte {err.start} cannot be decoded)", file=str(path),
                        hint="a recipe is TOML text; save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read the recipe: {err.strerror}", file=str(path)) from None


def read_header(path: Path) -> tuple[dict, dict]:
    """The recipe's ``[recipe]`` and ``[profiles]`` tables, read and shape-checked."""
    return _read_header(read_toml(path), str(path))


def profile_names(data: dict) -> list[str]:
    return list((data.get("profiles") or {}).keys())


#: A recipe value and the table it was written in: ``(plugin or None, key) -> (value, table)``.
Layer = dict[tuple[str | None, str], tuple[Any, str]]


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
    meta, profiles = _read_header(data, file)
    if profile is not None and profile not in profiles:
        raise UserError(f"no profile '{profile}'", file=file, table="profiles", key=profile,
                        hint=opts.did_you_mean(profile, profiles) or f"profiles here: {', '.join(profiles) or 'none'}")
    prof = dict(profiles.get(profile, {})) if profile else {}
    only = _names_list(prof.pop("only", None), file, f"profiles.{profile}", "only")
    prof.pop("description", None)
    raw_rows = data.get("row", [])
    if not isinstance(raw_rows, list) or not raw_rows:
        raise UserError("a recipe needs at least one [[row]]", file=file, table="row")
    shared = [_layer(data.get("defaults", {}), file, "defaults"),
              _layer(prof, file, f"profiles.{profile}"),
              _layer(overrides or {}, file, "--set")]

    rows: list[Row] = []
    used: set = set()
    for index, raw in enumerate(raw_rows):
        _expect_table(raw, file, f"row {index + 1}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise UserError("every [[row]] needs a name", file=file, table=f"row {index + 1}", key="name")
        if only is not None and name not in only:
            continue
        table = f"row '{name}'"
        own = _row_profile(raw, profile, profiles, file=file, table=table)
        for row in _resolve_row(raw, shared[0], [shared[1], own, shared[2]], file=file, table=table, used=used):
            row.recipe, row.profile = str(path), profile
            if any(r.name == row.name for r in rows):
                raise UserError(f"duplicate row name '{row.name}'", file=file, table=table, key="name",
                                hint="give every row (and sweep point) a distinct name")
            rows.append(row)
    _check_unused(shared, used, file)
    rows = _selected(rows, only, select, file, profile)
    recipe = Recipe(path=path, name=meta.get("name", path.stem), title=meta.get("title", path.stem),
                    description=meta.get("description", ""), profile=profile, profiles=list(profiles),
                    rows=rows, meta=meta)
    if check_files:
        validate_rows(recipe)
    return recipe


def _selected(rows: list[Row], only: list[str] | None, select: list[str] | None, file: str,
              profile: str | None) -> list[Row]:
    """The rows a profile's ``only`` and ``--only`` keep; a name that matches no row is an error."""
    if only is not None:
        missing = [n for n in only if not any(r.base_name == n for r in rows)]
        if missing:
            raise UserError(f"'only' names rows that do not exist: {', '.join(missing)}", file=file,
                            table=f"profiles.{profile}", key="only")
    if select is None:
        return rows
    unknown = [n for n in select if not any(r.base_name == n or r.name == n for r in rows)]
    if unknown:
        raise UserError(f"--only names unknown rows: {', '.join(unknown)}", file=file,
                        hint=f"rows: {', '.join(sorted({r.base_name for r in rows}))}")
    return [r for r in rows if r.base_name in select or r.name in select]


def _read_header(data: dict, file: str) -> tuple[dict, dict]:
    """The ``[recipe]`` and ``[profiles]`` tables, their shape checked: every top-level key known,
    ``[recipe]``'s values strings, every profile a table."""
    for key in data:
        if key not in TOP_LEVEL:
            raise UserError(f"unknown top-level table '{key}'", file=file, key=key,
                            hint=opts.did_you_mean(key, TOP_LEVEL) or f"allowed: {', '.join(TOP_LEVEL)}")
    meta = data.get("recipe", {})
    _expect_table(meta, file, "recipe")
    for key, value in meta.items():
        if key not in RECIPE_KEYS:
            raise UserError(f"unknown key '{key}'", file=file, table="recipe", key=key,
                            hint=opts.did_you_mean(key, RECIPE_KEYS) or f"allowed: {', '.join(RECIPE_KEYS)}")
        if not isinstance(value, str):
            raise UserError(f"expected a string, got {type(value).__name__} {value!r}", file=file, table="recipe",
                            key=key)
    profiles = data.get("profiles", {})
    _expect_table(profiles, file, "profiles")
    for name, table in profiles.items():
        _expect_table(table, file, f"profiles.{name}")
    return meta, profiles


def _names_list(value: Any, file: str, table: str, key: str) -> list[str] | None:
    """A list of row names (a profile's ``only``): None when absent, never empty, never a bare string."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"expected a list of row names, got {type(value).__name__} {value!r}", file=file,
                        table=table, key=key, hint=f'e.g. {key} = ["lora", "full"]')
    if not value:
        raise UserError("an empty list keeps no row", file=file, table=table, key=key,
                        hint="name the rows to keep, or remove the key to keep them all")
    return value


def _row_profile(raw: dict, profile: str | None, profiles: dict, *, file: str, table: str) -> Layer:
    """A row's own settings for one profile (``[row.profiles.cpu]``), checked like a profile table.

    For what only one row needs under a profile, where the profile's value would be wrong
    for it (a packing row's batch on the CPU, say).
    """
    own = raw.get("profiles", {})
    _expect_table(own, file, f"{table}.profiles")
    for name, section in own.items():
        if name not in profiles:
            raise UserError(f"no profile '{name}' in [profiles]", file=file, table=f"{table}.profiles", key=name,
                            hint=opts.did_you_mean(name, profiles) or f"profiles here: {', '.join(profiles) or 'none'}")
        _expect_table(section, file, f"{table}.profiles.{name}")
    return _layer(own.get(profile, {}) if profile else {}, file, f"{table}.profiles.{profile}")


def _expect_table(value: Any, file: str, table: str) -> None:
    if not isinstance(value, dict):
        raise UserError(f"expected a table, got {type(value).__name__} {value!r}", file=file, table=table)


def _layer(section: dict, file: str, table: str, *, plugins: list[str] | None = None) -> Layer:
    """One table of the recipe split into settings and plugin option tables, each value with the
    table it was written in. ``plugins``: a row's own list (its tables must name one of them);
    None for ``[defaults]``, profiles and ``--set``, which may set options of any installed plugin."""
    installed = registry()
    out: Layer = {}
    for key, value in section.items():
        if plugins is not None and key in ROW_ONLY_KEYS:
            continue
        if key in SETTING_FIELDS:
            out[(None, key)] = (value, table)
        elif key in (installed if plugins is None else plugins):
            _expect_table(value, file, f"{table}.{key}")
            get_plugin(key, file=file, table=table, key=key)
            out.update({(key, opt): (v, f"{table}.{key}") for opt, v in value.items()})
        elif plugins is not None and key in installed and isinstance(value, dict):
            raise UserError(f"options for plugin '{key}' but plugins = {plugins!r} does not list it",
                            file=file, table=table, key=key, hint=f"add '{key}' to plugins or remove the table")
        else:
            allowed = [*SETTING_FIELDS, *(installed if plugins is None else [*plugins, *ROW_ONLY_KEYS])]
            raise UserError(f"unknown key '{key}'", file=file, table=table, key=key,
                            hint=opts.did_you_mean(key, allowed) or "run 'tunerkit list' for settings and plugins")
    return out


def _options_class(plugin: str | None) -> type:
    return Settings if plugin is None else get_plugin(plugin).Options


def _sweep_values(plugin: str | None, key: str, value: Any) -> list | None:
    """The values of a sweep (a list given where the option takes one value), else None."""
    tp = opts.option_types(_options_class(plugin)).get(key)
    if tp is None or not isinstance(value, list):
        return None
    if _type_takes_list(tp) and not (value and all(isinstance(v, list) for v in value)):
        return None
    return value


def _type_takes_list(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_takes_list(a) for a in typing.get_args(tp))
    return tp is Any


def _check_unused(shared: list[Layer], used: set, file: str) -> None:
    """Values of ``[defaults]``, the profile and ``--set`` that no row built (options of a plugin no
    row lists, a setting every row overrides) are checked all the same: a typo there is still one."""
    for layer in shared:
        for (plugin, key), (value, table) in layer.items():
            if (plugin, key, table) not in used:
                for v in _sweep_values(plugin, key, value) or [value]:
                    opts.check_field(_options_class(plugin), key, v, file=file, table=table)


def _resolve_row(raw: dict, defaults: Layer, late: list[Layer], *, file: str, table: str,
                 used: set | None = None) -> list[Row]:
    """The rows of one ``[[row]]``: its layers merged (later wins, option by option), its sweeps
    expanded, and the settings and each plugin's options built once per sweep point."""
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise UserError("plugins must be a list of plugin names", file=file, table=table, key="plugins")
    pending = raw.get("pending")
    if pending is not None and not isinstance(pending, str):
        raise UserError("pending must be a string saying what is missing", file=file, table=table, key="pending")
    reference, note = raw.get("reference", {}), raw.get("note", "")
    _expect_table(reference, file, f"{table}.reference")
    if pending is None:
        for p in plugins:
            get_plugin(p, file=file, table=table)
        check_combination(plugins, file=file, table=table)
    # A pending row's plugins may not exist yet: keep it (reported "not implemented"), build its settings only.
    built = [] if pending is not None else plugins
    own = raw if pending is None else {k: v for k, v in raw.items() if k in SETTING_FIELDS}
    merged: Layer = {}
    for layer in (defaults, _layer(own, file, table, plugins=built), *late):
        merged.update(layer)
    merged = {k: v for k, v in merged.items() if k[0] is None or k[0] in built}
    if used is not None:
        used.update((plugin, key, where) for (plugin, key), (_, where) in merged.items())

    axes = []
    for (plugin, key), (value, where) in merged.items():
        values = _sweep_values(plugin, key, value)
        if values is not None:
            if not values:
                raise UserError("an empty list sweeps over nothing", file=file, table=where, key=key)
            axes.append(((plugin, key), values[:1] if pending is not None else values))
    axes.sort(key=lambda axis: -1 if axis[0][0] is None else built.index(axis[0][0]))  # names as ever: settings first
    rows = []
    for combo in itertools.product(*[values for _, values in axes]):
        point = {k: value for k, (value, _) in merged.items()}
        point.update(zip([k for k, _ in axes], combo))
        sweep = {(key if plugin is None else f"{plugin}.{key}"): v for ((plugin, key), _), v in zip(axes, combo)}
        settings, *options = [_build(owner, point, merged, file, table) for owner in (None, *built)]
        name = raw["name"] + ("[" + ",".join(f"{k}={_short(v)}" for k, v in sweep.items()) + "]"
                              if sweep and pending is None else "")
        rows.append(Row(name=name, base_name=raw["name"], settings=settings, plugins=list(plugins),
                        options=dict(zip(built, options)), sweep=sweep if pending is None else {},
                        reference=dict(reference), note=note, pending=pending))
    from tunerkit.fast_mode import apply_fast_mode  # reads the plugin registry: imported late

    return [apply_fast_mode(r) for r in rows]


def _build(owner: str | None, point: dict, merged: Layer, file: str, table: str):
    """The settings (``owner`` None) or one plugin's options of one sweep point, each error
    naming the table its key was written in."""
    values = {key: v for (plugin, key), v in point.items() if plugin == owner}
    where = {key: w for (plugin, key), (_, w) in merged.items() if plugin == owner}
    return opts.build(_options_class(owner), values, file=file, table=table if owner is None else f"{table}.{owner}",
                      where=where)


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
    rows = _resolve_row(raw, {}, [], file="<code>", table=f"row '{name}'")
    if len(rows) != 1:
        raise ValueError("make_row builds one row; sweeps belong in a recipe")
    rows[0].recipe, rows[0].profile = "<code>", profile
    return rows[0]
