"""The results database is checked before anything trains; concurrent --resume runs never
train one row twice; stored metrics are always valid JSON."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from faults_common import tiny_recipe
from tunerkit.cli import main
from tunerkit.errors import UserError
from tunerkit.store import SCHEMA_VERSION, Store

RECIPE = tiny_recipe("db", '''
[[row]]
name = "one"
plugins = ["lora"]
[[row]]
name = "two"
plugins = ["full"]
[[row]]
name = "three"
plugins = ["lora"]
lora = { rank = 4 }
''')


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "db.toml"
    path.write_text(RECIPE)
    return path


def bad_dbs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "random.db").write_bytes(os.urandom(4096))
    (tmp_path / "a-file").write_text("x")
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    # Tests run as root, which chmod does not stop: a folder that cannot be made (its parent
    # is a file) stands in for a read-only one, as both fail opening the file for writing.
    return {"proc": Path("/proc/tunerkit.db"), "folder": tmp_path / "a-folder", "random bytes": tmp_path / "random.db",
            "parent is a file": tmp_path / "a-file" / "t.db", "newer schema": newer}


@pytest.mark.parametrize("case", ["proc", "folder", "random bytes", "parent is a file", "newer schema"])
def test_a_bad_db_is_one_line_and_exit_2_before_any_row(tmp_path, recipe, case):
    db = bad_dbs(tmp_path)[case]
    result = CliRunner().invoke(main, ["run", str(recipe), "--db", str(db), "--runs-dir", str(tmp_path / "runs"),
                                       "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("tunerkit:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--db" in lines[0], result.output
    assert "[1/3]" not in result.output  # nothing trained
    assert not (tmp_path / "runs").exists()


def test_report_on_random_bytes_is_one_line(tmp_path):
    db = bad_dbs(tmp_path)["random bytes"]
    result = CliRunner().invoke(main, ["report", "--db", str(db)])
    assert result.exit_code == 2 and "not a database" in result.output, result.output


def test_an_unversioned_db_is_upgraded_with_its_rows(tmp_path):
    from tunerkit.store import SCHEMA

    db = tmp_path / "old.db"
    old_schema = SCHEMA.replace(", 'skipped'", "").split("CREATE TABLE IF NOT EXISTS claims")[0]
    with sqlite3.connect(db) as conn:
        conn.executescript(old_schema)
        conn.execute("INSERT INTO runs (recipe, row, profile, config_hash, config, status, metrics, environment,"
                     " started, finished) VALUES ('r', 'x', NULL, 'h', '{}', 'ok', '{}', '{}', 0, 0)")
    store = Store(db).check()
    assert [r["row"] for r in store.latest()] == ["x"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("INSERT INTO runs (recipe, row, profile, config_hash, config, status, metrics, environment,"
                     " started, finished) VALUES ('r', 'y', NULL, 'h', '{}', 'skipped', '{}', '{}', 0, 0)")


def test_nan_metrics_are_stored_as_null_json(tmp_path, tiny_row):
    store = Store(tmp_path / "t.db")
    store.record(recipe="r", row=tiny_row("lora"), repeat=0, status="ok", reason=None,
                 metrics={"train_loss": float("nan"), "curve": [1.0, float("inf")], "nested": {"x": -math.inf}},
                 environment={}, started=0.0)
    with sqlite3.connect(tmp_path / "t.db") as conn:
        raw = conn.execute("SELECT metrics FROM runs").fetchone()[0]
    assert "NaN" not in raw and "Infinity" not in raw
    assert json.loads(raw) == {"train_loss": None, "curve": [1.0, None], "nested": {"x": None}}


# -- claims -------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claim_as(db: Path, row, pid: int) -> None:
    import socket

    with sqlite3.connect(db) as conn:
        conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     ("r", row.name, row.profile or "", 0, row.config_hash(), pid, socket.gethostname(), time.time()))


def test_a_row_claimed_by_a_live_process_is_skipped_a_dead_ones_taken_over(tmp_path, tiny_row):
    row = tiny_row("lora")
    store = Store(tmp_path / "t.db").check()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim_as(store.path, row, sleeper.pid)
        assert store.claim(recipe="r", row=row, repeat=0) == f"pid {sleeper.pid} on {__import__('socket').gethostname()}"
    finally:
        sleeper.kill()
        sleeper.wait()
    claim_as(store.path, row, dead_pid())
    assert store.claim(recipe="r", row=row, repeat=0) is None  # taken over
    store.release(recipe="r", row=row, repeat=0)
    store.record(recipe="r", row=row, repeat=0, status="ok", reason=None, metrics={}, environment={}, started=0.0)
    assert store.claim(recipe="r", row=row, repeat=0) == "done"


def test_two_resume_processes_train_every_row_once(tmp_path, recipe):
    db = tmp_path / "runs" / "t.db"
    exe = str(Path(sys.executable).with_name("tunerkit"))
    cmd = [exe, "run", str(recipe), "--resume", "--db", str(db), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with sqlite3.connect(db) as conn:
        counts = dict(conn.execute("SELECT row, COUNT(*) FROM runs GROUP BY row").fetchall())
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # all released
    assert counts == {"one": 1, "two": 1, "three": 1}, outs
