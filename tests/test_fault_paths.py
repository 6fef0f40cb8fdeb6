"""Names from recipes and from the results database never choose where files go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faults_common import tiny_recipe
from tunerkit.errors import UserError
from tunerkit.paths import inside, safe_component

HOSTILE = ["..", ".", "", "/tmp/x", "../../x", "a/../../b", "..\\..\\x", "x\x00y", "~root", ".hidden", "ü" * 300]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_becomes_one_plain_component(name):
    comp = safe_component(name)
    assert comp and "/" not in comp and "\\" not in comp and "\x00" not in comp
    assert not comp.startswith(".") and len(comp) <= 120
    assert Path("base", comp).resolve().parent == Path("base").resolve()


def test_long_names_stay_distinct():
    assert safe_component("a" * 200 + "1") != safe_component("a" * 200 + "2")


def test_inside_refuses_a_link_that_leads_out(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "evil").symlink_to(tmp_path.parent)
    assert inside(tmp_path / "runs", "fine", "row") == tmp_path / "runs" / "fine" / "row"
    with pytest.raises(UserError, match="outside"):
        inside(tmp_path / "runs", "evil", "row")


RECIPE = tiny_recipe("{name}", defaults="save = true\n", rows='''
[[row]]
name = ".."
plugins = ["lora"]
''')


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("recipe_name", ["../../escape", "/tmp/tunerkit-escape-test"])
def test_run_and_plot_write_only_under_the_named_folders(tmp_path, recipe_name):
    from tunerkit.recipe import load_recipe
    from tunerkit.report.plots import make_plots
    from tunerkit.runner import run_recipe
    from tunerkit.store import Store

    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    recipe_file = work / "r.toml"
    recipe_file.write_text(RECIPE.replace("{name}", recipe_name))
    before = files_under(tmp_path) | {recipe_file}
    store = Store(work / "runs" / "t.db").check()
    outcomes = run_recipe(load_recipe(recipe_file), store, runs_dir=work / "runs", progress=False,
                          echo=lambda *_: None)
    assert [o.status for o in outcomes] == ["ok"]
    written = make_plots(store.latest(), work / "plots")
    new = files_under(tmp_path) - before
    assert any(p.name == "adapter_config.json" for p in new)  # the row did save its adapter
    assert new and all(p.is_relative_to(work / "runs") or p.is_relative_to(work / "plots") for p in new), new
    assert all(p.is_relative_to(work / "plots") for p in written)
    assert not os.path.exists("/tmp/tunerkit-escape-test")


def test_plot_names_from_a_shared_database_stay_in_out(tmp_path):
    from tunerkit.report.plots import make_plots

    records = [{"recipe": "../../../outside", "profile": "/tmp/evil", "row": f"r{i}", "repeat": 0, "status": "ok",
                "config": {"plugins": ["lora"], "settings": {}}, "reference": {}, "environment": {},
                "metrics": {"peak_memory_gib": 1.0 + i, "samples_per_s": 2.0 + i, "train_loss": 1.0,
                            "train_loss_curve": [2.0, 1.0]}} for i in range(2)]
    out = tmp_path / "deep" / "out"
    written = make_plots(records, out)
    assert written and all(p.parent == out for p in written)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(p.name for p in written)
