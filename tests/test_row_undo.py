"""ctx.patch / ctx.patch_item / ctx.on_teardown: every process-wide change a row makes is
undone after it, newest first, each undo on its own, whether the row succeeded or failed."""

from __future__ import annotations

import types

import pytest

from tunerkit import Plugin, hookimpl
from tunerkit.context import RunContext


def bare_context(hook=None) -> RunContext:
    return RunContext(row=None, hook=hook, out_dir=None)


def test_patches_are_undone_newest_first_and_missing_attributes_go_again():
    target = types.SimpleNamespace(a=1)
    module = types.ModuleType("m")
    module.f = "original"
    registry = {"kept": 1}
    order = []
    ctx = bare_context()
    ctx.on_teardown(lambda: order.append("first"))
    assert ctx.patch(target, "a", 2) == 1
    ctx.patch(target, "a", 3)  # patched twice: the oldest value wins in the end
    ctx.patch(target, "b", "new")  # was absent
    ctx.patch(module, "f", "patched")
    ctx.patch_item(registry, "kept", 2)
    ctx.patch_item(registry, "added", 3)
    ctx.on_teardown(lambda: order.append("last"))
    assert (target.a, target.b, module.f, registry) == (3, "new", "patched", {"kept": 2, "added": 3})
    assert ctx.undo_changes() == []
    assert order == ["last", "first"]
    assert target.a == 1 and not hasattr(target, "b") and module.f == "original" and registry == {"kept": 1}
    assert ctx.undo_changes() == []  # nothing left to undo


def test_an_inherited_attribute_is_deleted_again_not_copied():
    class Base:
        def forward(self):
            return "base"

    instance = Base()
    ctx = bare_context()
    ctx.patch(instance, "forward", lambda: "patched")
    assert instance.forward() == "patched"
    ctx.undo_changes()
    assert "forward" not in vars(instance) and instance.forward() == "base"


def test_one_raising_undo_does_not_stop_the_others():
    target = types.SimpleNamespace(a=1, b=1)
    ctx = bare_context()
    ctx.patch(target, "a", 2)

    def broken():
        raise RuntimeError("cannot undo")

    ctx.on_teardown(broken, "broken undo")
    ctx.patch(target, "b", 2)
    errors = ctx.undo_changes()
    assert errors == ["broken undo: RuntimeError: cannot undo"]
    assert (target.a, target.b) == (1, 1)


class RaisingTeardown(Plugin):
    name = "raising_teardown"

    @hookimpl
    def teardown(self, ctx):
        raise RuntimeError("teardown broke")


class CountingTeardown(Plugin):
    name = "counting_teardown"
    calls = 0

    @hookimpl
    def teardown(self, ctx):
        CountingTeardown.calls += 1


def test_every_teardown_hook_runs_when_one_raises():
    from tunerkit.core import CoreDefaults
    from tunerkit.plugins import make_manager

    CountingTeardown.calls = 0
    # pluggy calls the newest registration first: the raising plugin runs before the counting one
    pm = make_manager([CoreDefaults()], [CountingTeardown(), RaisingTeardown()])
    target = types.SimpleNamespace(a=1)
    ctx = bare_context(pm.hook)
    ctx.patch(target, "a", 2)
    errors = ctx.close()
    assert errors == ["plugin 'raising_teardown' teardown: RuntimeError: teardown broke"]
    assert CountingTeardown.calls == 1 and target.a == 1


class PatchThenFail(Plugin):
    """Patches a process-wide value when training starts and fails at the first step's end."""

    name = "patch_then_fail"
    target = types.SimpleNamespace(value="original")

    @hookimpl
    def on_train_begin(self, ctx):
        ctx.patch(self.target, "value", "patched")

    @hookimpl
    def on_step_end(self, ctx):
        assert self.target.value == "patched"
        raise RuntimeError("failed at step 1")


def test_the_loop_undoes_a_failed_row_and_keeps_its_reason(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    with pytest.raises(RuntimeError, match="failed at step 1"):
        run_row(tiny_row("lora"), tmp_path / "r", extra_plugins=[PatchThenFail(), RaisingTeardown()])
    assert PatchThenFail.target.value == "original"


class PatchOnly(Plugin):
    name = "patch_only"

    @hookimpl
    def on_train_begin(self, ctx):
        ctx.patch(PatchThenFail.target, "value", "patched")


def test_a_finished_row_whose_undo_fails_is_failed_with_the_reason(tiny_row, tmp_path):
    from tunerkit.errors import RowFailed
    from tunerkit.loop import run_row

    with pytest.raises(RowFailed, match="undoing its changes failed: plugin 'raising_teardown'"):
        run_row(tiny_row("lora"), tmp_path / "r", extra_plugins=[PatchOnly(), RaisingTeardown()])
    assert PatchThenFail.target.value == "original"
