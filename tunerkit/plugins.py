"""Plugin discovery and the per-row plugin manager.

Built-in plugins and third-party ones are found the same way: the ``tunerkit.plugins``
entry-point group. Each row gets a fresh ``pluggy.PluginManager`` holding the core's
defaults and one instance of every plugin the row names, built from its options table.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any, ClassVar

import pluggy

from tunerkit import hookspecs
from tunerkit.errors import UserError
from tunerkit.metricspec import MetricSpec
from tunerkit.options import did_you_mean

ENTRY_POINT_GROUP = "tunerkit.plugins"


@dataclasses.dataclass
class NoOptions:
    """A plugin without options."""


class Plugin:
    """Base class of every tuner plugin.

    Subclasses set ``name``, ``summary``, an ``Options`` dataclass (defaults = the
    those of ms-swift's benchmark page, each field with ``metadata={"help": ...}``) and implement hooks as methods
    decorated with ``tunerkit.hookimpl``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: Plugins filling the same slot exclude each other (e.g. two ways to choose what trains).
    slot: ClassVar[str | None] = None
    #: Plugin names this one cannot run with (a tuple, or a dict of name -> the reason, which
    #: the recipe error then quotes), and names it needs beside it.
    conflicts: ClassVar[tuple[str, ...] | dict[str, str]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    #: A one-of requirement: at least one of these must be in the row.
    requires_any: ClassVar[tuple[str, ...]] = ()
    #: What the plugin measures (tunerkit.MetricSpec): columns of ``report``, panels of ``plot``.
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    #: Row settings this plugin replaces (e.g. ``{"lr_scheduler": "its own warm-up"}``): the
    #: stored config marks them as not used rather than keeping them as if they were.
    overrides: ClassVar[dict[str, str]] = {}
    #: How tunerkit.testing's conformance suite builds this plugin's row: "companions" (plugins
    #: it needs beside it), "options", "companion_options", "settings"; "skip" only with a reason.
    conformance: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()


def discover() -> dict[str, type[Plugin]]:
    """Every installed plugin class by name."""
    found: dict[str, type[Plugin]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue  # the same distribution seen twice on sys.path
        try:
            cls = ep.load()
        except Exception as err:  # a broken third-party plugin must not hide the others
            found[ep.name] = _broken(ep.name, ep.value, err)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            found[ep.name] = _broken(ep.name, ep.value, TypeError("not a tunerkit.Plugin subclass"))
            continue
        found[ep.name] = cls
    return found


def _broken(name: str, target: str, err: Exception) -> type[Plugin]:
    class Broken(Plugin):
        summary = f"failed to load {target}: {err}"
        load_error = f"{type(err).__name__}: {err}"
    Broken.name = name
    return Broken


_REGISTRY: dict[str, type[Plugin]] | None = None


def registry() -> dict[str, type[Plugin]]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = discover()
    return _REGISTRY


def reset_registry() -> None:
    """Forget discovered plugins (a plugin package installed in this process after the first discovery)."""
    global _REGISTRY
    _REGISTRY = None
    importlib.invalidate_caches()


def get_plugin(name: str, *, file=None, table=None, key="plugins") -> type[Plugin]:
    plugins = registry()
    if name not in plugins:
        raise UserError(f"unknown plugin '{name}'", file=file, table=table, key=key,
                        hint=did_you_mean(name, plugins) or "run 'tunerkit list' to see installed plugins")
    cls = plugins[name]
    if getattr(cls, "load_error", None):
        raise UserError(f"plugin '{name}' failed to load: {cls.load_error}", file=file, table=table, key=key,
                        hint="reinstall the package that provides it")
    return cls


def check_combination(names: list[str], *, file=None, table=None) -> None:
    """Reject plugin sets that cannot work together, with the reason each plugin declared."""
    classes = {n: get_plugin(n, file=file, table=table) for n in names}
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"plugin '{dup}' is listed twice", file=file, table=table, key="plugins")
    slots: dict[str, str] = {}
    for name, cls in classes.items():
        if cls.slot:
            if cls.slot in slots:
                raise UserError(f"plugins '{slots[cls.slot]}' and '{name}' both fill the '{cls.slot}' role",
                                file=file, table=table, key="plugins", hint="keep one of them")
            slots[cls.slot] = name
        for other in cls.conflicts:
            if other in classes:
                why = cls.conflicts.get(other) if isinstance(cls.conflicts, dict) else None
                raise UserError(f"plugin '{name}' cannot run with '{other}'" + (f" ({why})" if why else ""),
                                file=file, table=table, key="plugins", hint=f"remove one of '{name}' and '{other}'")
        for need in cls.requires:
            if need not in classes:
                raise UserError(f"plugin '{name}' needs '{need}' in the same row", file=file, table=table,
                                key="plugins", hint=f"plugins = {names + [need]!r}")
        if cls.requires_any and not any(n in classes for n in cls.requires_any):
            raise UserError(f"plugin '{name}' needs one of {', '.join(cls.requires_any)} in the same row",
                            file=file, table=table, key="plugins")


def settings_not_used(names: list[str]) -> dict[str, str]:
    """Row settings that plugins of ``names`` replace, each with the plugin and its reason."""
    plugins = registry()
    out: dict[str, str] = {}
    for name in names:
        for setting, why in getattr(plugins.get(name), "overrides", {}).items():
            out[setting] = f"replaced by plugin '{name}'" + (f": {why}" if why else "")
    return out


def make_manager(core_plugins: list[Any], plugin_instances: list[Plugin], extra_plugins=()) -> pluggy.PluginManager:
    """A fresh manager for one row: the core's defaults first, then the row's plugins, then
    ``extra_plugins`` (objects with hookimpls a caller adds, e.g. a test's probe).

    Every method marked ``@hookimpl`` must name a hook of the spec: a misspelled one
    (``on_step_ends``) would otherwise register and never run."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for core in core_plugins:
        pm.register(core, name=f"core:{type(core).__name__}")
    for plugin in plugin_instances:
        pm.register(plugin, name=plugin.name)
    for extra in extra_plugins:
        name = getattr(extra, "name", None)
        pm.register(extra, name=name if name and pm.get_plugin(name) is None else None)
    check_hook_names(pm)
    return pm


def check_hook_names(pm: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending``, as a one-line error naming the plugin and the method."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        name = pm.get_name(err.plugin) or type(err.plugin).__name__
        known = [h for h in dir(pm.hook) if not h.startswith("_") and getattr(pm.hook, h).spec is not None]
        unknown = [h for h in dir(pm.hook) if not h.startswith("_") and getattr(pm.hook, h).spec is None
                   and any(i.plugin is err.plugin for i in getattr(pm.hook, h).get_hookimpls())]
        method = unknown[0] if unknown else "?"
        raise UserError(f"plugin '{name}' ({type(err.plugin).__qualname__}) marks method '{method}' as a hook, "
                        "but tunerkit has no hook of that name", key="plugins",
                        hint=did_you_mean(method, known) or "see docs/hooks.md for the hook names") from None
