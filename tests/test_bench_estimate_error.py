"""bench/estimate_error.py --spread: the same configuration measured more than once, across stores.

The speeds written below are made up to check the grouping and the arithmetic.
"""

import shutil
import time
import pytest

from tunerkit.store import Store


@pytest.fixture(scope="module")
def script(bench_script):
    return bench_script("estimate_error")


def put(store, row, tokens, started, device="cuda", host=None, card="GPU X"):
    env = {"device_name": card} | ({} if host is None else {"host_op_us": host})
    store.record(recipe="tuners", row=row, repeat=0, status="ok", reason=None,
                 metrics={"tokens_per_s": tokens, "memory": [{"device": device, "peak_allocated_gib": 1.0}]},
                 environment=env, started=started)


def test_runs_of_one_configuration_group_across_stores_and_a_copied_record_counts_once(script, tiny_row, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "t.db", tmp_path / "b" / "t.db"
    lora = tiny_row("lora", name="lora")
    put(Store(first), lora, 1000.0, started=1.0)
    put(Store(first), tiny_row("lora", name="lora", lora={"rank": 16}), 9000.0, started=3.0)  # another config
    shutil.copy(first, second)                                                          # a store started from the first
    longer = tiny_row("lora", name="lora", gradient_accumulation_steps=8, evaluate=["infer_speed"])
    put(Store(second), longer, 1500.0, started=time.time(), host=4.25)  # same work per micro-batch, run again
    put(Store(second), lora, 800.0, started=5.0, device="cpu")       # a CPU row is not compared
    entries = script.spread([first, second])
    assert len(entries) == 1
    (e,) = entries
    assert e["row"] == "lora" and e["tokens_per_s"] == [1000.0, 1500.0] and e["ratio"] == pytest.approx(1.5)
    assert e["stores"] == ["a/t.db", "b/t.db"]
    assert e["host_op_us"] == [None, 4.25]
    assert "| tuners | lora | GPU X | 1,000, 1,500 | 1.50 | -, 4.2 | a/t.db, b/t.db |" in script.render_spread(entries)


def test_runs_on_different_cards_are_not_one_configurations_spread(script, tiny_row, tmp_path):
    store = Store(tmp_path / "t.db")
    lora = tiny_row("lora", name="lora")
    put(store, lora, 1000.0, started=1.0, card="NVIDIA H200")
    put(store, lora, 3000.0, started=2.0, card="NVIDIA H100 80GB HBM3")
    assert script.spread([tmp_path / "t.db"]) == []
    put(store, lora, 1200.0, started=3.0, card="NVIDIA H200")
    (e,) = script.spread([tmp_path / "t.db"])
    assert e["device"] == "NVIDIA H200" and e["tokens_per_s"] == [1000.0, 1200.0]
