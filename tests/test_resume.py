"""A run killed mid-row and rerun with --resume finishes the rest without redoing finished rows."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

RECIPE = '''
[recipe]
name = "resume"
[defaults]
model = "tiny-llama"
dataset = "builtin:arithmetic"
max_train_samples = 16
batch_size = 4
gradient_accumulation_steps = 1
max_length = 64
max_steps = 1
gradient_checkpointing = false
evaluate = []
[[row]]
name = "first"
plugins = ["full"]
[[row]]
name = "long"
plugins = ["full"]
max_steps = 100000
token_budget = 20000
[[row]]
name = "third"
plugins = ["lora"]
'''


def count(db, row=None):
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            if row is None:
                return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            return conn.execute("SELECT COUNT(*) FROM runs WHERE row = ?", (row,)).fetchone()[0]
        except sqlite3.OperationalError:
            return 0


@pytest.mark.slow
def test_kill_mid_row_then_resume(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    db = tmp_path / "db.sqlite"
    cmd = [sys.executable, "-m", "tunerkit.cli", "run", str(recipe), "--db", str(db), "--no-progress",
           "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.time() + 240
    while count(db) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)  # now inside the long row
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert count(db, "first") == 1 and count(db, "long") == 0, "killed mid-row: nothing half-written"

    # --resume: the long row must finish quickly now
    recipe.write_text(RECIPE.replace("token_budget = 20000", "token_budget = 200"))
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "first: already in" in done.stdout
    assert count(db, "first") == 1, "a finished row was redone"
    assert count(db, "long") == 1 and count(db, "third") == 1
