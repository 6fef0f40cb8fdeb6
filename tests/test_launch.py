"""Relaunching under torchrun: the command, the checks inside a launch, too few GPUs."""

from __future__ import annotations

import sys

import pytest

from tunerkit import launch
from tunerkit.errors import UserError


@pytest.fixture
def outside_launch(monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)


def test_command_reruns_the_same_cli_line_under_torchrun():
    cmd = launch.torchrun_command(4, ["/usr/bin/tunerkit", "run", "r.toml", "--only", "a"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in cmd and "--standalone" in cmd
    assert cmd[-6:] == ["-m", "tunerkit.cli", "run", "r.toml", "--only", "a"]


def test_one_gpu_needs_no_launcher(outside_launch, monkeypatch):
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: pytest.fail("must not relaunch"))
    assert launch.relaunch_if_needed(1) is None


def test_too_few_gpus_is_one_line_naming_gpus(outside_launch, monkeypatch):
    monkeypatch.setattr(launch, "visible_gpus", lambda: 1)
    with pytest.raises(UserError) as err:
        launch.relaunch_if_needed(2)
    assert err.value.key == "gpus"
    assert "asks for 2 GPUs but 1 is visible" in str(err.value) and "\n" not in str(err.value)


def test_outside_a_launch_it_relaunches_and_exits_with_torchruns_code(outside_launch, monkeypatch):
    seen = []
    monkeypatch.setattr(launch, "visible_gpus", lambda: 8)
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd: seen.append(cmd) or 3)
    with pytest.raises(SystemExit) as stop:
        launch.relaunch_if_needed(2, argv=["tunerkit", "run", "x.toml"])
    assert stop.value.code == 3
    assert seen and "--nproc_per_node=2" in seen[0] and seen[0][-3:] == ["tunerkit.cli", "run", "x.toml"]


def test_inside_a_launch_it_only_checks_the_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: pytest.fail("must not relaunch"))
    assert launch.relaunch_if_needed(2) is None
    with pytest.raises(UserError) as err:
        launch.relaunch_if_needed(4)
    assert err.value.key == "gpus" and "started 2 processes" in str(err.value)


def test_cli_refuses_more_gpus_than_visible(tmp_path, outside_launch, monkeypatch):
    from click.testing import CliRunner

    from tunerkit.cli import main

    monkeypatch.setattr(launch, "visible_gpus", lambda: 0)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[row]]\nname = "a"\nplugins = ["lora"]\nmodel = "tiny-llama"\ngpus = 2\n')
    result = CliRunner().invoke(main, ["run", str(recipe), "--db", str(tmp_path / "db")])
    assert result.exit_code == 2
    assert "gpus" in result.output and "asks for 2 GPUs but 0 are visible" in result.output
