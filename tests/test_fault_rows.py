"""A row's faults: NaN loss, a missing optional package, exit codes, Ctrl-C, shared CPUs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from faults_common import tiny_recipe
from tunerkit.cli import main
from tunerkit.errors import MissingPackage, RowFailed
from tunerkit.guards import check_losses
from tunerkit.hookspecs import hookimpl

RECIPE = tiny_recipe("rows", '''
[[row]]
name = "good"
plugins = ["lora"]
[[row]]
name = "bad"
plugins = ["lora"]
dataset = "{bad}"
''')


def recipe_of(rows):
    from tunerkit.recipe import Recipe

    return Recipe(path=Path("r.toml"), name="r", title="", description="", profile=None, profiles=[], rows=rows)


def test_check_losses_names_the_step():
    check_losses([2.0, 1.5])
    with pytest.raises(RowFailed, match="loss became nan at step 3"):
        check_losses([2.0, 1.5, float("nan"), 1.0])
    with pytest.raises(RowFailed, match="loss became inf at step 1"):
        check_losses([float("inf")])


class NanAfterTwoSteps:
    """Turns the loss NaN from the third optimizer step on."""

    @hookimpl(tryfirst=True)
    def compute_loss(self, ctx, model, batch):
        loss = model(**batch).loss
        return loss * float("nan") if ctx.global_step >= 2 else loss


def test_a_nan_loss_fails_the_row_at_its_step(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    with pytest.raises(RowFailed, match="loss became nan at step 3"):
        run_row(tiny_row("lora", max_steps=4, evaluate=[]), tmp_path, extra_plugins=[NanAfterTwoSteps()])


def test_a_missing_optional_package_skips_the_row_and_the_others_run(tmp_path, tiny_row, monkeypatch):
    import tunerkit.loop
    from tunerkit.runner import run_recipe
    from tunerkit.store import Store

    real = tunerkit.loop.run_row

    def run_row(row, out_dir, progress=None, extra_plugins=()):
        if row.name == "needs-galore":
            raise MissingPackage("galore_torch")
        if row.name == "needs-module":
            raise ModuleNotFoundError("No module named 'some_pkg.sub'", name="some_pkg.sub")
        return real(row, out_dir, progress=progress, extra_plugins=extra_plugins)

    monkeypatch.setattr(tunerkit.loop, "run_row", run_row)
    rows = [tiny_row("lora", name=n, max_steps=1, evaluate=[]) for n in ("needs-galore", "needs-module", "fine")]
    store = Store(tmp_path / "t.db")
    out = run_recipe(recipe_of(rows), store, runs_dir=tmp_path, progress=False, echo=lambda *_: None)
    assert [o.status for o in out] == ["skipped", "skipped", "ok"]
    reasons = {r["row"]: (r["status"], r["reason"]) for r in store.latest()}
    assert reasons["needs-galore"] == ("skipped", "skipped: needs galore-torch (pip install galore-torch)")
    assert reasons["needs-module"] == ("skipped", "skipped: needs some_pkg (pip install some-pkg)")
    assert reasons["fine"][0] == "ok"
    # Once the package is installed, --resume runs the skipped rows; the finished one stays done.
    assert [store.done(recipe="r", row=r, repeat=0) for r in rows] == [False, False, True]
    assert store.claim(recipe="r", row=rows[0], repeat=0) is None


def test_galore_without_its_package_says_what_to_install(monkeypatch):
    import importlib.util

    from tunerkit_plugins.tuners import galore

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MissingPackage, match=r"needs galore-torch \(pip install galore-torch\)"):
        galore._require("galore_torch", "galore-torch")


def test_run_exits_1_when_a_row_failed_and_records_every_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_ids": [1, -5, 3]}) + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace("{bad}", str(bad)))
    db = tmp_path / "t.db"
    result = CliRunner().invoke(main, ["run", str(recipe), "--db", str(db), "--runs-dir", str(tmp_path / "runs"),
                                       "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "| good" in result.output and "| bad" in result.output  # the table still prints
    assert "input_ids[1] is -5" in result.output
    with sqlite3.connect(db) as conn:
        assert dict(conn.execute("SELECT row, status FROM runs")) == {"good": "ok", "bad": "failed"}


def tunerkit_exe() -> str:
    return str(Path(sys.executable).with_name("tunerkit"))


@pytest.mark.parametrize("when", ["start-up", "training"])
def test_ctrl_c_is_one_line_and_exit_130_and_resume_goes_on(tmp_path, when):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace('dataset = "{bad}"', "max_steps = 100000\ntoken_budget = 100000000"))
    db = tmp_path / "t.db"
    cmd = [tunerkit_exe(), "run", str(recipe), "--db", str(db), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    # A suite started in the background by a non-interactive shell (`cmd &`) passes SIGINT on
    # as ignored, and Python then installs no KeyboardInterrupt handler: give the child Ctrl-C's default.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if when == "training":
        for line in proc.stdout:
            if "[2/2]" in line:
                break
        time.sleep(3)
    else:
        # Start-up: the interrupt lands while torch is still being imported (its library
        # mapped, nothing printed yet), the slowest part of every command's start.
        maps = Path(f"/proc/{proc.pid}/maps")
        deadline = time.monotonic() + 120
        while "libtorch" not in maps.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], err
    if when == "training":
        with sqlite3.connect(db) as conn:
            assert [r[0] for r in conn.execute("SELECT row FROM runs")] == ["good"]


def test_report_names_the_profiles_a_db_does_have(tmp_path, tiny_row):
    from tunerkit.store import Store

    store = Store(tmp_path / "t.db")
    from tunerkit.recipe import make_row

    row = make_row("lora", ["lora"], profile="cpu", model="tiny-llama")
    store.record(recipe="tuners", row=row, repeat=0, status="ok", reason=None, metrics={}, environment={}, started=0)
    result = CliRunner().invoke(main, ["report", "--db", str(store.path), "-p", "bench"])
    assert result.exit_code == 2
    assert "no bench records" in result.output and "cpu records" in result.output and "-p cpu" in result.output


def test_rows_on_a_shared_cpu_are_footnoted():
    from tunerkit.report.tables import busy_note

    def rec(row, start, end):
        return {"row": row, "environment": {"load_average": {"start": start, "end": end, "cpu_count": 2}}}

    assert busy_note([rec("a", 0.5, 1.0)]) is None
    note = busy_note([rec("a", 0.5, 1.0), rec("b", 1.0, 5.5)])
    assert "b (5.5 on 2 cores)" in note and "a (" not in note


def test_every_row_records_its_load_average_and_host(tmp_path, tiny_row):
    from tunerkit.runner import run_recipe
    from tunerkit.store import Store

    store = Store(tmp_path / "t.db")
    run_recipe(recipe_of([tiny_row("lora", max_steps=1, evaluate=[])]), store, runs_dir=tmp_path,
               progress=False, echo=lambda *_: None)
    env = store.latest()[0]["environment"]
    load = env["load_average"]
    assert load["cpu_count"] == os.cpu_count() and load["start"] >= 0 and load["end"] >= 0
    # the host's side of a step, which batch-1 GPU rows wait on: its CPU and the time to issue an op
    assert env["host_op_us"] > 0
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
        assert env["cpu_model"] in names


def test_evaluation_after_the_last_step_shows_on_the_bar(tiny_row, tmp_path):
    from tunerkit.loop import run_row
    from tunerkit.progress import EvaluationProgress, RowProgress

    class Recording(RowProgress):
        def __init__(self):
            super().__init__("r", enabled=True)
            self.seen = []

        def evaluating(self, names):
            self.seen.append(("evaluating", names, self.bar.n))
            super().evaluating(names)
            time.sleep(0.05)
            self.seen.append(("postfix", self.bar.postfix))

        def evaluated(self):
            self.seen.append(("evaluated",))
            super().evaluated()

    bar = Recording()
    run_row(tiny_row("lora", max_steps=2, val_size=4, evaluate=["eval_loss"]), tmp_path, progress=bar,
            extra_plugins=[EvaluationProgress(bar)])
    bar.close()
    assert bar.seen[0] == ("evaluating", ["eval_loss"], 2)  # after the last step
    assert "evaluating eval_loss" in bar.seen[1][1] and bar.seen[2] == ("evaluated",)
