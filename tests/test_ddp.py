"""DDP on CPU: two gloo processes train exactly what one process trains on the same global batch.

The two-process run goes through the very command ``tunerkit run`` relaunches itself with
(torchrun, ``-m tunerkit.cli``); the one-process baseline runs in this process. Each process
of the pair takes batch_size 1 and the baseline batch_size 2, with two micro-batches per
step, so both see the same samples per optimizer step (accelerate hands process i the
batches i, i + 2, ... of the same shuffled order).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tunerkit.loop
from tunerkit.launch import torchrun_command

ROWS = """
[recipe]
name = "ddp-check"

[defaults]
model = "tiny-llama"
dataset = "builtin:arithmetic"
max_train_samples = 16
val_size = 4
max_length = 128
learning_rate = 1e-3
lr_scheduler = "constant"
warmup_ratio = 0.0
max_steps = 3
gradient_accumulation_steps = 2
gradient_checkpointing = false
evaluate = ["eval_loss"]
save = true
gpus = {gpus}
batch_size = {batch_size}

[[row]]
name = "full"
plugins = ["full"]

[[row]]
name = "lora"
plugins = ["lora"]
lora = {{ rank = 4, dropout = 0.0 }}
"""


def write_recipe(folder: Path, gpus: int, batch_size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.toml"
    path.write_text(ROWS.format(gpus=gpus, batch_size=batch_size))
    return path


def records(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT row, status, reason, metrics FROM runs").fetchall()
    assert len(rows) == len({r[0] for r in rows}), "a row was recorded more than once (only rank 0 records)"
    return {name: {"status": status, "reason": reason, **json.loads(metrics)} for name, status, reason, metrics in rows}


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(file))
    assert weights, f"no weights saved in {folder}"
    return weights


def launch(recipe: Path, folder: Path, processes: int) -> subprocess.CompletedProcess:
    argv = ["tunerkit", "run", str(recipe), "--db", str(folder / "runs.db"), "--runs-dir", str(folder / "runs"),
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(torchrun_command(processes, argv), cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


def test_two_processes_train_what_one_process_trains(tmp_path):
    from tunerkit.recipe import load_recipe

    pair = tmp_path / "pair"
    done = launch(write_recipe(pair, gpus=2, batch_size=1), pair, processes=2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = records(pair / "runs.db")

    single = tmp_path / "single"
    baseline = {row.name: tunerkit.loop.run_row(row, single / row.name)
                for row in load_recipe(write_recipe(single, gpus=1, batch_size=2)).rows}

    for name, want in baseline.items():
        m = got[name]
        assert m["status"] == "ok", m["reason"]
        assert m["world_size"] == 2
        assert m["train_loss_curve"] == pytest.approx(want["train_loss_curve"], rel=1e-5)
        assert m["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5)
        # Memory: one entry per process, gathered over gloo, never summed.
        assert len(m["memory"]) == 2 and all("peak_rss_gib" in e for e in m["memory"])
        mine = saved_weights(single / name / "model")
        theirs = saved_weights(pair / "runs" / "ddp-check" / name / "model")
        assert mine.keys() == theirs.keys()
        for key in mine:
            # Adam turns float noise in near-zero gradients into ~1e-6 steps; the updates are ~3e-3.
            torch.testing.assert_close(theirs[key], mine[key], rtol=0, atol=1e-5, msg=key)
        if hasattr(tunerkit.loop, "global_throughput"):
            # Counted over both processes: the same samples and tokens as the one process trained.
            assert m["train_samples"] == want["train_samples"] and m["train_tokens"] == want["train_tokens"]
            assert m["tokens_per_s_per_gpu"] == pytest.approx(m["tokens_per_s"] / 2)


def test_the_core_asks_ddp_for_gradients_in_its_buckets():
    """The core's Accelerator wraps DDP with gradient_as_bucket_view: each gradient lives in its
    all-reduce bucket instead of beside a copy of it (one gradient-sized buffer less per GPU);
    the two-process test above trains the same losses and weights with it."""
    from tunerkit.core import CoreDefaults

    accelerator = CoreDefaults().setup_distributed(None)
    assert accelerator.ddp_handler is not None and accelerator.ddp_handler.gradient_as_bucket_view is True
