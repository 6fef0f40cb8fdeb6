"""make_manager: every discovered plugin registers cleanly; a misspelled hook is a one-line error."""

from __future__ import annotations

import pytest

from tunerkit import Plugin, hookimpl
from tunerkit.core import CoreDefaults
from tunerkit.errors import UserError
from tunerkit.plugins import make_manager, registry


class Misspelled(Plugin):
    name = "misspelled"

    @hookimpl
    def on_step_ends(self, ctx):  # on_step_end
        raise AssertionError("never called")


def test_every_discovered_plugin_registers_without_unknown_hooks():
    plugins = {name: cls for name, cls in registry().items() if not getattr(cls, "load_error", None)}
    assert {"lora", "galore", "compile", "packing", "liger", "neftune"} <= set(plugins)
    pm = make_manager([CoreDefaults()], [cls() for cls in plugins.values()])
    registered = {pm.get_name(p) for p in pm.get_plugins()}
    assert set(plugins) <= registered


def test_a_misspelled_hook_names_the_plugin_and_the_method():
    with pytest.raises(UserError) as err:
        make_manager([CoreDefaults()], [Misspelled()])
    message = str(err.value)
    assert "plugin 'misspelled'" in message and "'on_step_ends'" in message
    assert "did you mean 'on_step_end'?" in message
    assert "\n" not in message


def test_a_row_with_a_misspelled_hook_stops_before_it_runs(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    with pytest.raises(UserError, match="on_step_ends"):
        run_row(tiny_row("lora"), tmp_path / "r", extra_plugins=[Misspelled()])
    assert not (tmp_path / "r").exists()


def test_an_unmarked_method_is_not_a_hook():
    """pluggy only sees methods marked @hookimpl: helpers of a plugin may have any name."""

    class Helper(Plugin):
        name = "helper"

        def on_step_ends(self, ctx):
            return None

    make_manager([CoreDefaults()], [Helper()])
