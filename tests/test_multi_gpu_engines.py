"""DeepSpeed ZeRO-2/3 and Ulysses sequence parallelism on CPU (gloo): same losses and weights as one process.

One torchrun launch of two processes runs every engine row; the one-process baselines run
in this process on the same global batch:
- ZeRO rows: batch 1 per process, two micro-batches per step; baseline batch 2 (see test_ddp).
- Sequence-parallel rows (sp_size 2, so one data-parallel group): the two processes share
  every sample; baseline batch 1 with the same two micro-batches per step. Samples have one
  length (gloo's all_gather needs equal shapes; NCCL does not) and half of them carry labels
  only in their second half, so one shard of those has no label token at all: the loss
  weighting across the SP group is what makes the losses agree.
"""

from __future__ import annotations

import inspect
import json
import random

import pytest

import tunerkit.loop
from test_ddp import launch, records, saved_weights

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow

LENGTH = 48

RECIPE = """
[recipe]
name = "engines"

[defaults]
model = "tiny-llama"
max_length = 128
learning_rate = 1e-3
lr_scheduler = "constant"
warmup_ratio = 0.0
max_steps = 3
gradient_accumulation_steps = 2
gradient_checkpointing = false
attention = "sdpa"
gpus = {gpus}

[[row]]
name = "zero"
plugins = {zero_plugins}
dataset = "builtin:arithmetic"
max_train_samples = 16
val_size = 4
evaluate = ["eval_loss"]
batch_size = {zero_batch}
{zero_options}

[[row]]
name = "sp"
plugins = {sp_plugins}
dataset = "{data}"
evaluate = []
batch_size = 1
save = true
"""


def loop_counts_shifted_labels() -> bool:
    return hasattr(tunerkit.loop, "count_label_tokens") or "shift_labels" in inspect.getsource(tunerkit.loop.train_step)


def write_tokens(path, rows: int = 16) -> str:
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(rows):
            ids = [rng.randrange(10, 1000) for _ in range(LENGTH)]
            labels = list(ids) if i % 2 else [-100] * 30 + ids[30:]
            fh.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
    return str(path)


def write(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.toml"
    path.write_text(RECIPE.format(**fields))
    return path


def test_zero_and_ulysses_train_what_one_process_trains(tmp_path):
    from tunerkit.recipe import load_recipe

    if not loop_counts_shifted_labels():
        pytest.skip("the loop does not count shift_labels yet: sequence-parallel rows cannot run")
    data = write_tokens(tmp_path / "tokens.jsonl")
    pair = tmp_path / "pair"
    sp_rows = '["full", "sequence_parallel"]'
    done = launch(write(pair, gpus=2, zero_batch=1, zero_plugins='["full", "deepspeed"]',
                        zero_options="deepspeed = { zero_stage = [2, 3] }", sp_plugins=sp_rows, data=data), pair, 2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = records(pair / "runs.db")

    single = tmp_path / "single"
    rows = {r.name: r for r in load_recipe(write(single, gpus=1, zero_batch=2, zero_plugins='["full"]', zero_options="",
                                                 sp_plugins='["full"]', data=data)).rows}
    want_zero = tunerkit.loop.run_row(rows["zero"], single / "zero")
    want_sp = tunerkit.loop.run_row(rows["sp"], single / "sp")

    for stage in (2, 3):
        m = got[f"zero[deepspeed.zero_stage={stage}]"]
        assert m["status"] == "ok", m["reason"]
        assert m["deepspeed_zero_stage"] == stage
        assert m["train_loss_curve"] == pytest.approx(want_zero["train_loss_curve"], rel=1e-5)
        assert m["eval_loss"] == pytest.approx(want_zero["eval_loss"], rel=1e-5)
        assert len(m["memory"]) == 2

    m = got["sp"]
    assert m["status"] == "ok", m["reason"]
    assert (m["sp_size"], m["effective_dp_size"]) == (2, 1)
    assert m["train_loss_curve"] == pytest.approx(want_sp["train_loss_curve"], rel=1e-5)
    mine, theirs = saved_weights(single / "sp" / "model"), saved_weights(pair / "runs" / "engines" / "sp" / "model")
    for key in mine:
        assert (theirs[key] - mine[key]).abs().max() < 1e-5, key
    if hasattr(tunerkit.loop, "global_throughput"):
        assert m["train_samples"] == want_sp["train_samples"]
        assert m["train_tokens"] == want_sp["train_tokens"]
        assert m["train_label_tokens"] == want_sp["train_label_tokens"]
