"""The input shapes a row trains on, as the loop meets them and as ``tunerkit estimate`` draws
them, and the host time cuDNN attention spends planning each shape a process meets first.

On a Hopper GPU torch's SDPA, left to choose, takes cuDNN attention, which builds a plan per new
input shape; a row alone in its process (or first in it) pays one for every sample length it
meets, a later row with the same data none. The plan's cost is fitted on a GPU
(docs/performance.md); here the CPU checks what it multiplies: which shapes are new, and when.
"""

from __future__ import annotations

import pytest

from tunerkit import metrics
from tunerkit.estimate import SHAPE_PLAN_SECONDS, build_estimate, estimate_row
from tunerkit.loop import run_row

VARIED = dict(dataset="synthetic:lengths?mean=40&sd=24&min=4&max=96&rows=48", max_length=96, val_size=0,
              max_train_samples=None, max_steps=None,
              evaluate=[], token_budget=1600, timing_warmup_steps=1)
H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def fresh_process(monkeypatch):
    """A process that has trained on no shape yet."""
    monkeypatch.setattr(metrics, "_SHAPES_MET", set())


@pytest.mark.parametrize("batch, accumulation", [(1, 2), (3, 2)])
def test_the_estimate_draws_the_shapes_the_loop_trains_on(tiny_row, tmp_path, fresh_process, batch, accumulation):
    """The loop counts the micro-batches whose shape its process meets first, in all steps and
    in the timed ones; the estimate draws the same micro-batches (the loader's seeded order,
    padded to each batch's longest) and comes to the same counts. A second row on the same
    data in the same process meets no new shape, and the estimate says so given the first's."""
    row = tiny_row("lora", **VARIED, batch_size=batch, gradient_accumulation_steps=accumulation)
    est = build_estimate(row, gpu=False)
    first = run_row(row, tmp_path / "a")
    assert first["new_input_shapes"] == len(set(est.input_shapes)) > 4
    assert first["timed_new_input_shapes"] == est.new_timed_shapes() > 0
    # the speed is predicted over the timed micro-batches' own tokens, the ones the loop times
    timed_tokens = first["tokens_per_s"] * sum(first["step_seconds"][first["timing_warmup_steps"]:])
    assert sum(real for *_, real in est.timed_batches()) == pytest.approx(timed_tokens, rel=1e-6)
    assert first["optimizer_steps"] * accumulation == len(est.input_shapes)

    again = run_row(row, tmp_path / "b")
    assert again["new_input_shapes"] == 0 == est.new_timed_shapes(est.shape_keys())


def test_a_row_of_another_model_meets_every_shape_anew(tiny_row, tmp_path, fresh_process):
    """An attention plan is for one model's heads as much as for one length: a row whose model
    has other heads meets every shape again after a row of the same data, in the loop's count
    and in the estimate's."""
    first, other = tiny_row("lora", **VARIED), tiny_row("lora", **VARIED, model="tiny-qwen2")
    est_first, est_other = build_estimate(first, gpu=False), build_estimate(other, gpu=False)
    assert est_first.shape.attention != est_other.shape.attention
    run_row(first, tmp_path / "a")
    second = run_row(other, tmp_path / "b")
    assert second["new_input_shapes"] == len(set(est_other.input_shapes)) > 4
    assert second["timed_new_input_shapes"] == est_other.new_timed_shapes(est_first.shape_keys()) > 0


def test_plans_are_counted_only_where_cudnn_attention_plans_them(tiny_row):
    """A row left to torch's SDPA on an H100 pays SHAPE_PLAN_SECONDS for each new timed shape;
    pinned to flash, eager, varlen (padding-free), on another GPU, or where the process's
    earlier shapes are unknown (``shapes_met=None``) it pays none."""
    row = tiny_row("lora", **VARIED)
    est = build_estimate(row, gpu=True)
    new = est.new_timed_shapes()
    timed = len(est.input_shapes) - est.warmup_micro_batches
    assert new > 0

    def speed(r, device=H100, met=frozenset()):
        return estimate_row(r, 100.0, gpu=True, host_op_us=6.0, device_name=device,
                            shapes_met=None if met is None else set(met))

    planned, unknown = speed(row), speed(row, met=None)
    assert planned["new_timed_shapes_planned"] == new and unknown["new_timed_shapes_planned"] == 0
    # the planning is host time added to the timed micro-batches, on top of the same work
    tokens = sum(real for *_, real in est.timed_batches())
    assert len(est.timed_batches()) == timed
    extra = tokens / planned["tokens_per_s"] - tokens / unknown["tokens_per_s"]
    assert extra == pytest.approx(new * SHAPE_PLAN_SECONDS)

    for other in (tiny_row("lora", **VARIED, sdpa_kernels=["flash"]), tiny_row("lora", **VARIED, attention="eager"),
                  tiny_row("lora", "padding_free", **VARIED)):
        assert speed(other)["new_timed_shapes_planned"] == 0
    assert speed(tiny_row("lora", **VARIED, sdpa_kernels=["cudnn", "flash"]))["new_timed_shapes_planned"] == new
    assert speed(row, device="NVIDIA A100-SXM4-80GB")["new_timed_shapes_planned"] == 0
    assert speed(row, met=est.shape_keys())["new_timed_shapes_planned"] == 0


def test_speed_is_predicted_over_the_timed_samples_not_the_datas_mean(tiny_row):
    """Rows alike but for the seed time different samples; one whose timed micro-batches are
    longer spreads the same per-micro-batch host work over more tokens, so it is predicted
    faster (the data's mean sample, the same for every seed, would predict them all alike)."""
    rows = [tiny_row("lora", **VARIED, seed=seed) for seed in range(6)]
    per_batch, speed = [], []
    for row in rows:
        timed = build_estimate(row, gpu=True).timed_batches()
        per_batch.append(sum(real for *_, real in timed) / len(timed))
        speed.append(estimate_row(row, 100.0, gpu=True, host_op_us=6.0, device_name=H100)["tokens_per_s"])
    assert max(per_batch) > 1.2 * min(per_batch)  # the seeds do time different samples
    assert speed.index(max(speed)) == per_batch.index(max(per_batch))
    assert speed.index(min(speed)) == per_batch.index(min(per_batch))


def test_a_stores_rows_are_predicted_with_what_their_process_trained_before(tiny_row, tmp_path):
    """``tunerkit estimate --db`` reads each record's place in its process: a row alone in its
    process or first in it plans every new shape; the second row of a process on the same data
    plans none; a record that does not say (older stores) is predicted without plans."""
    from dataclasses import replace

    from tunerkit.estimate_cli import compare, stored_rows
    from tunerkit.store import Store

    db = tmp_path / "t.db"
    store = Store(db)
    row = tiny_row("lora", name="lora", **VARIED)
    memory = [{"device": "cuda", "peak_allocated_gib": 1.0}]
    for started, (name, extra) in enumerate([("first", {"rows_before_in_process": 0}),
                                             ("second", {"rows_before_in_process": 1}),
                                             ("alone", {"isolation": "process"}), ("unknown", {})]):
        store.record(recipe="r", row=replace(row, name=name), repeat=0, status="ok", reason=None,
                     metrics={"tokens_per_s": 1000.0, "memory": memory, **extra},
                     environment={"device_name": H100}, started=float(started))
    planned = {e["row"]: e["planned_shapes"] for e in compare(stored_rows(db))}
    new = build_estimate(row, gpu=True).new_timed_shapes()
    assert planned == {"first": new, "second": 0, "alone": new, "unknown": 0}
