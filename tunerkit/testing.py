"""Test kit for plugins, built-in and third-party: fixtures, helpers and a conformance check.

Use it as a pytest plugin (tunerkit registers it through the ``pytest11`` entry point, so
installing tunerkit is enough; ``pytest_plugins = ["tunerkit.testing"]`` in a conftest.py
does the same where entry-point plugins are disabled). Fixtures:

- ``tiny_row("lora", lora={"rank": 4})``: a resolved row on the ``tiny-llama`` preset;
- ``run_tiny(row)``: train and evaluate it through the real loop, return its metrics;
- ``tiny_context(row)``: a context with the model loaded and tuned, no data (unit tests);
- ``recipe_error(toml_text, "fragment", ...)``: assert a recipe is refused with one line;
- ``tiny_recipe(toml_text)``: run a recipe into a fresh database, for :func:`report_text`
  (what ``tunerkit report`` prints) and :func:`plot_panels` (what ``tunerkit plot`` draws).

The conformance check every plugin passes (``class TestMine(PluginConformance): plugin = "mine"``):
its options round-trip and reject bad values with one line, ``validate`` is reachable on a
row alone, a row with it trains on a tiny model, teardown leaves no well-known global
changed, and the saved artifacts reload with plain transformers / PEFT. A plugin that needs
a companion (an adapter tuner beside a quantized loader) or settings declares them in
``conformance`` on its class; a row its own ``validate`` refuses on this machine (no GPU, a
missing package) is skipped with that reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

#: a row small enough for a test: the tiny preset on the builtin arithmetic task, 2 steps, eval loss
TINY = dict(model="tiny-llama", dataset="builtin:arithmetic", max_train_samples=16, val_size=4, batch_size=4,
            gradient_accumulation_steps=1, max_length=128, learning_rate=1e-3, evaluate=["eval_loss"],
            max_steps=2, gradient_checkpointing=False)
#: the conformance row: no tokenizer, no evaluation, one step of 2 short samples, artifacts saved
CONFORMANCE = dict(model="tiny-llama", dataset="synthetic:lengths?mean=24&sd=4&min=8&max=32&rows=8",
                   max_train_samples=4, val_size=0, batch_size=2, gradient_accumulation_steps=1, max_length=32,
                   learning_rate=1e-3, evaluate=[], max_steps=1, gradient_checkpointing=False, save=True)


# ---------------------------------------------------------------------------
# helpers (plain functions; the fixtures below wrap them)


def make_tiny_row(*plugins: str, name: str = "test", base: dict | None = None, **overrides):
    """A resolved row on the tiny preset: ``make_tiny_row("lora", lora={"rank": 4}, max_steps=3)``."""
    from tunerkit.recipe import make_row

    return make_row(name, list(plugins), **{**(TINY if base is None else base), **overrides})


def train_row(row, out_dir: Path) -> dict:
    """Train and evaluate ``row`` through the real loop; its metrics (raises where the row fails)."""
    from tunerkit.loop import run_row

    return run_row(row, Path(out_dir))


def recipe_refusal(path: Path, text: str, *fragments: str, profile: str | None = None) -> str:
    """Write ``text`` to ``path``, load it as a recipe and return the one-line refusal;
    fails the test when the recipe loads, the message spans lines or misses a fragment."""
    from tunerkit.errors import UserError
    from tunerkit.recipe import load_recipe

    Path(path).write_text(text)
    with pytest.raises(UserError) as info:
        load_recipe(path, profile)
    message = str(info.value)
    assert "\n" not in message.strip(), f"a recipe error is one line, got:\n{message}"
    assert info.value.exit_code == 2
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def validation_error(row) -> str | None:
    """The one-line reason the public recipe check (``tunerkit run --check``) gives for ``row``, or ``None``."""
    from tunerkit.errors import UserError
    from tunerkit.validation import validate_row

    try:
        validate_row(row, file="<test>")
    except UserError as err:
        return str(err)
    return None


def run_recipe_text(folder: Path, text: str) -> tuple[Path, str]:
    """Write ``text`` as a recipe in ``folder``, run every row into ``folder/results.db``;
    returns (database, recipe name) for :func:`report_text` and :func:`plot_panels`."""
    from tunerkit.recipe import load_recipe
    from tunerkit.runner import run_recipe
    from tunerkit.store import Store

    folder = Path(folder)
    path = folder / "recipe.toml"
    path.write_text(text)
    recipe = load_recipe(path)
    db = folder / "results.db"
    run_recipe(recipe, Store(db), runs_dir=folder / "runs", progress=False, echo=lambda *a: None)
    return db, recipe.name


def report_text(db: Path, recipe: str, fmt: str = "md") -> str:
    """What ``tunerkit report`` prints for ``recipe`` (md, csv or json)."""
    from tunerkit.report import recorded
    from tunerkit.report.tables import render

    return render(recorded(Path(db), recipe, None), fmt)


def plot_panels(db: Path, recipe: str) -> dict[str, list[str]]:
    """The panel titles of every figure ``tunerkit plot`` draws for ``recipe``, by figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunerkit.report import recorded
    from tunerkit.report.plots import FIGURES
    from tunerkit.report.tables import combine_repeats, order_by_row

    records = order_by_row(combine_repeats(recorded(Path(db), recipe, None)))
    panels = {}
    for kind, make in FIGURES.items():
        fig = make(records)
        if fig is not None:
            panels[kind] = [ax.get_title() for ax in fig.axes if ax.get_title()]
            plt.close(fig)
    return panels


# ---------------------------------------------------------------------------
# globals a plugin may change and must restore


def snapshot_globals() -> dict[str, Any]:
    """Well-known process-wide state a plugin might patch: torch's modes and flags, every
    ``torch.nn.functional`` function, global module hooks, the forward of every class of the
    loaded transformers modeling modules, and transformers' attention registry."""
    import torch
    import torch.nn.functional as F
    from torch.nn.modules import module as nn_module

    snap: dict[str, Any] = {
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.get_num_threads()": torch.get_num_threads(),
    }
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_module_registration_hooks",
                 "_global_parameter_registration_hooks", "_global_buffer_registration_hooks"):
        hooks = getattr(nn_module, name, None)
        if hooks is not None:
            snap[f"torch.nn.modules.module.{name}"] = tuple(hooks)
    for name, value in vars(F).items():
        if callable(value) and not name.startswith("__"):
            snap[f"torch.nn.functional.{name}"] = value
    for cls in (torch.nn.Module, torch.nn.Linear, torch.nn.Embedding):
        snap[f"torch.nn.{cls.__name__}.forward"] = cls.forward
    snap["torch.nn.Module.__call__"] = torch.nn.Module.__call__
    for modname, mod in list(sys.modules.items()):
        if modname.startswith("transformers.models.") and ".modeling_" in modname and mod is not None:
            for attr, value in list(vars(mod).items()):
                if isinstance(value, type) and getattr(value, "__module__", None) == modname:
                    snap[f"{modname}.{attr}.forward"] = vars(value).get("forward")
                elif callable(value) and not isinstance(value, type) and not attr.startswith("_"):
                    snap[f"{modname}.{attr}"] = value
    attention = sys.modules.get("transformers.modeling_utils")
    registry = getattr(attention, "ALL_ATTENTION_FUNCTIONS", None)
    if registry is not None:
        snap["transformers ALL_ATTENTION_FUNCTIONS"] = tuple(sorted((k, id(registry[k])) for k in registry))
    return snap


def changed_globals(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The names whose value differs (by identity for functions); names that appeared only
    ``after`` are modules imported meanwhile and do not count."""
    changed = []
    for name, old in before.items():
        new = after.get(name, _MISSING)
        if new is _MISSING:
            changed.append(f"{name} (removed)")
        elif callable(old) or callable(new):
            if old is not new:
                changed.append(name)
        elif old != new:
            changed.append(f"{name}: {old!r} -> {new!r}")
    return changed


_MISSING = object()


# ---------------------------------------------------------------------------
# conformance


def plugin_class(plugin):
    """A plugin class from its class or its registered name."""
    from tunerkit.plugins import get_plugin, registry, reset_registry

    if isinstance(plugin, type):
        return plugin
    if plugin not in registry():
        reset_registry()  # a package installed in this process after the first discovery
    return get_plugin(plugin)


def conformance_row(cls, **overrides):
    """The row the conformance check trains: the plugin, its declared companions, options
    and settings (``cls.conformance``) on the tiny preset."""
    spec = dict(getattr(cls, "conformance", {}) or {})
    plugins = [*spec.get("companions", ()), cls.name]
    table = {**CONFORMANCE, **spec.get("settings", {}), **overrides}
    options = spec.get("options", {})
    if options:
        table[cls.name] = options
    for name, opts in spec.get("companion_options", {}).items():
        table[name] = opts
    return make_tiny_row(*plugins, name=f"conformance-{cls.name}", base=table)


def check_options(cls) -> None:
    """Defaults build from an empty table, round-trip through their own values (and JSON),
    every option has help, and an unknown key or a wrongly typed value is refused in one
    line naming the key."""
    from tunerkit import options as opts
    from tunerkit.errors import UserError

    fields = [f for f in dataclasses.fields(cls.Options) if f.init]
    for f in fields:
        assert opts.field_help(f), f"{cls.name}: option '{f.name}' has no help text (tunerkit.option(default, help))"
    default = opts.build(cls.Options, {}, file="recipe.toml", table=f"row 'r'.{cls.name}")
    values = json.loads(json.dumps({f.name: getattr(default, f.name) for f in fields}))
    assert opts.build(cls.Options, values) == default, f"{cls.name}: options do not round-trip through their values"
    bad_tables = [{"no_such_option_zz": 1}]
    hints = typing.get_type_hints(cls.Options)
    for f in fields:
        wrong = _wrong_value(hints[f.name])
        if wrong is not _MISSING:
            bad_tables.append({f.name: wrong})
    for table in bad_tables:
        with pytest.raises(UserError) as info:
            opts.build(cls.Options, table, file="recipe.toml", table=f"row 'r'.{cls.name}")
        message = str(info.value)
        assert "\n" not in message.strip(), f"{cls.name}: option error spans lines:\n{message}"
        assert next(iter(table)) in message and "recipe.toml" in message, f"{cls.name}: {message!r} names no key/file"


def _wrong_value(tp):
    """A TOML value the type ``tp`` refuses, or ``_MISSING`` when it takes anything."""
    from tunerkit.options import check_value

    for candidate in ({"x": 1}, [[["x"]]], "not-a-valid-value-zz", 1.5, True):
        try:
            check_value(candidate, tp)
        except TypeError:
            return candidate
    return _MISSING


def check_validate(cls, row) -> str | None:
    """``validate`` and ``validate_model`` answer on a row alone (no context, nothing loaded):
    ``None`` or one line. Returns the public check's refusal of ``row`` on this machine."""
    plugin = cls(row.options[cls.name])
    if hasattr(plugin, "validate"):
        reason = plugin.validate(row=row)
        assert reason is None or (isinstance(reason, str) and "\n" not in reason.strip()), \
            f"{cls.name}.validate must return None or one line, got {reason!r}"
    refusal = validation_error(row)
    assert refusal is None or "\n" not in refusal.strip(), f"{cls.name}: the row's refusal spans lines"
    return refusal


def check_trains(cls, row, out_dir: Path) -> dict:
    """The row trains (a finite loss), and after it no well-known global differs."""
    import math

    before = snapshot_globals()
    metrics = train_row(row, out_dir)
    changed = changed_globals(before, snapshot_globals())
    assert not changed, f"{cls.name}: teardown left globals changed: {changed[:5]}"
    loss = metrics.get("train_loss")
    assert loss is not None and math.isfinite(loss), f"{cls.name}: no finite training loss ({loss!r})"
    return metrics


def check_artifacts(row, out_dir: Path) -> None:
    """What ``save_artifacts`` wrote reloads with plain transformers (a full model) or PEFT
    (an adapter on the plain base model), every saved tensor landing where it came from."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model_dir = Path(out_dir) / "model"
    assert model_dir.is_dir(), f"nothing saved under {model_dir}"
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel, get_peft_model_state_dict

        model = PeftModel.from_pretrained(plain_base_model(row), model_dir)
        saved = load_file(model_dir / "adapter_model.safetensors")
        loaded = get_peft_model_state_dict(model)
    else:
        model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], f"reload mismatch: {info}"
        saved = {}
        for file in model_dir.glob("*.safetensors"):
            saved.update(load_file(file))
        loaded = model.state_dict()
    missing = sorted(set(saved) - set(loaded))
    assert not missing, f"saved tensors the reloaded model lacks: {missing[:5]}"
    for key, tensor in saved.items():
        assert torch.equal(loaded[key].to(tensor.dtype), tensor), f"{key} differs after reload"


def plain_base_model(row):
    """The row's base model loaded with transformers alone (a preset: its config and the
    same seeded random weights tunerkit draws)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunerkit.models.loading import model_path, preset_checkpoint, resolve_model

    source = resolve_model(row.settings.model)
    path = preset_checkpoint(source.preset, torch.float32) if source.preset is not None else model_path(source)
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


class PluginConformance:
    """The conformance suite: subclass it in a test module with ``plugin`` set to the
    plugin's name (or class); pytest collects a subclass whose name starts with ``Test``.

        class TestIA3(PluginConformance):
            plugin = "ia3"
    """

    plugin: Any = None

    @pytest.fixture
    def plugin_name(self):
        return self.plugin

    @pytest.fixture
    def plugin_cls(self, plugin_name):
        return plugin_class(plugin_name)

    def test_options_round_trip_and_refuse_bad_values(self, plugin_cls):
        check_options(plugin_cls)

    def test_trains_tears_down_and_reloads(self, plugin_cls, tmp_path):
        spec = getattr(plugin_cls, "conformance", {}) or {}
        row = conformance_row(plugin_cls)
        refusal = check_validate(plugin_cls, row)
        if spec.get("skip"):
            pytest.skip(f"{plugin_cls.name}: {spec['skip']}")
        if refusal is not None:
            pytest.skip(f"{plugin_cls.name} cannot run on this machine: {refusal}")
        check_trains(plugin_cls, row, tmp_path)
        if spec.get("reload"):  # artifacts that need the plugin's own code, with the reason
            assert (tmp_path / "model").is_dir(), f"{plugin_cls.name}: nothing saved"
            return
        check_artifacts(row, tmp_path)


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture
def tiny_row():
    """``tiny_row("lora", lora={"rank": 4}, max_steps=3)`` -> a resolved Row on the tiny preset."""
    return make_tiny_row


@pytest.fixture
def run_tiny(tmp_path):
    """Train a tiny row end to end through the real loop; returns its metrics."""
    return lambda row: train_row(row, tmp_path / row.name)


@pytest.fixture
def tiny_context(tmp_path):
    """A RunContext with the model loaded, modified and tuned (no data), for unit tests of plugins."""
    import torch

    from tunerkit.core import resolve_dtype
    from tunerkit.loop import build_context, seed_everything
    from tunerkit.models.loading import resolve_model

    def build(row):
        ctx = build_context(row, tmp_path)
        seed_everything(row.settings.seed)
        ctx.device = torch.device("cpu")
        ctx.dtype = resolve_dtype(row.settings.dtype, ctx.device)
        ctx.model_source = resolve_model(row.settings.model)
        ctx.model = ctx.hook.load_model(ctx=ctx)
        ctx.tokenizer = ctx.hook.load_tokenizer(ctx=ctx)
        ctx.hook.modify_model(ctx=ctx)
        ctx.hook.apply_tuner(ctx=ctx)
        return ctx

    return build


@pytest.fixture
def recipe_error(tmp_path):
    """``recipe_error(toml_text, "unknown option", ...)``: the one-line refusal of that recipe."""
    return lambda text, *fragments, profile=None: recipe_refusal(tmp_path / "recipe.toml", text, *fragments,
                                                                  profile=profile)


@pytest.fixture
def tiny_recipe(tmp_path):
    """``db, name = tiny_recipe(toml_text)``: the recipe run into a fresh database."""
    return lambda text: run_recipe_text(tmp_path, text)


def pytest_configure(config):
    # One conversion of the bundled model per machine, shared by every test session.
    os.environ.setdefault("TUNERKIT_CACHE", str(Path.home() / ".cache" / "tunerkit"))
