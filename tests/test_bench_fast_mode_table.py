"""bench/fast_mode_table.py: rows paired across the plain and fast profiles of one store.

The speeds and memory written below are made up to check the pairing and the arithmetic.
"""

import time
from dataclasses import replace

import pytest

from tunerkit.store import Store


@pytest.fixture(scope="module")
def table(bench_script):
    return bench_script("fast_mode_table")


def put(store, row, profile, status="ok", tokens=None, alloc=None, fast_mode=None, reason=None, device="GPU X",
        **extra):
    row = replace(row, profile=profile)
    row.fast_mode = fast_mode or {}
    metrics = {} if status != "ok" else {
        "tokens_per_s": tokens, "memory": [{"device": "cuda", "peak_allocated_gib": alloc}], **extra}
    store.record(recipe="tuners", row=row, repeat=0, status=status, reason=reason, metrics=metrics,
                 environment={"device_name": device}, started=time.time())


def test_rows_pair_by_name_with_speedup_memory_verdict_and_switches(table, tiny_row, tmp_path):
    store = Store(tmp_path / "t.db")
    lora, dora, full = (tiny_row("lora", name=n) for n in ("lora", "dora", "full"))
    put(store, lora, "bench", tokens=1000.0, alloc=20.0, isolation="process")
    put(store, lora, "fast", tokens=1500.0, alloc=18.0, isolation="process", mfu_pct=30.0,
        fast_mode={"added": ["packing", "compile"], "refused": {"liger": "no GPU"}})
    put(store, dora, "bench", tokens=400.0, alloc=20.0, isolation="process")
    put(store, dora, "fast", tokens=600.0, alloc=25.0, isolation="process", fast_mode={"added": ["compile"]})
    put(store, full, "bench", tokens=900.0, alloc=50.0)
    put(store, full, "fast", status="failed", reason="OOM: out of memory")
    entries = {e["row"]: e for e in table.pairs(tmp_path / "t.db")}
    assert entries["lora"]["speedup"] == pytest.approx(1.5) and entries["lora"]["at_most_memory"] is True
    assert entries["dora"]["speedup"] == pytest.approx(1.5) and entries["dora"]["at_most_memory"] is False
    assert entries["lora"]["switches"] == ["packing", "compile"] and entries["lora"]["refused"] == {"liger": "no GPU"}
    assert "speedup" not in entries["full"]
    text = table.render(list(entries.values()))
    # MFU as the fast row recorded it; the plain row's device ("GPU X") has no stated ceiling
    assert "| lora | GPU | 1,000 | 1,500 | 1.50× | 20.00 | 18.00 | yes | - → 30.0 | packing+compile | liger: no GPU |" in text
    assert "fast: failed OOM: out of memory" in text
    assert "1 fast at no more allocated memory" in text and "every row in a process of its own" in text


def test_memory_an_earlier_row_left_is_named(table, tiny_row, tmp_path):
    store = Store(tmp_path / "t.db")
    lora = tiny_row("lora", name="lora")
    put(store, lora, "bench", tokens=1000.0, alloc=33.0, held_before_gib=14.4)
    put(store, lora, "fast", tokens=1500.0, alloc=18.0)
    text = table.render(table.pairs(tmp_path / "t.db"))
    assert "memory an earlier row left allocated is in the peaks of: lora" in text


def test_repeated_runs_count_against_the_fast_mode_and_missing_sides_are_named(table, tiny_row, tmp_path):
    store = Store(tmp_path / "t.db")
    lora, neft, galore = (tiny_row("lora", name=n) for n in ("lora", "lora+neftune", "galore"))
    put(store, lora, "bench", tokens=800.0, alloc=20.0)
    put(store, lora, "bench", tokens=1000.0, alloc=20.0)   # a later plain run, faster
    put(store, lora, "fast", tokens=1500.0, alloc=18.0)
    put(store, lora, "fast", tokens=1200.0, alloc=18.0)    # a later fast run, slower
    put(store, neft, "bench", tokens=900.0, alloc=20.0)    # its fast row never ran
    put(store, galore, "bench", status="skipped", reason="skipped: needs bitsandbytes")
    put(store, galore, "fast", status="skipped", reason="skipped: needs bitsandbytes")
    entries = {e["row"]: e for e in table.pairs(tmp_path / "t.db")}
    # the plain row's fastest run against the fast row's slowest: a spread can only lower it
    assert entries["lora"]["speedup"] == pytest.approx(1.2)
    text = table.render(list(entries.values()))
    assert "| lora | GPU | 1,000 (2 runs: 800–1,000) | 1,200 (2 runs: 1,200–1,500) | 1.20× |" in text
    assert "| lora+neftune | GPU | | | fast: not run |" in text
    assert "plain: skipped: needs bitsandbytes; fast: skipped: needs bitsandbytes" in text


def test_runs_on_different_cards_are_never_paired(table, tiny_row, tmp_path):
    store = Store(tmp_path / "t.db")
    lora = tiny_row("lora", name="lora")
    put(store, lora, "bench", tokens=1000.0, alloc=20.0, device="NVIDIA H200")
    put(store, lora, "bench", tokens=700.0, alloc=20.0, device="NVIDIA H100 80GB HBM3")
    put(store, lora, "fast", tokens=1500.0, alloc=18.0, device="NVIDIA H100 80GB HBM3")
    entries = {(e["row"], e["device"]): e for e in table.pairs(tmp_path / "t.db")}
    # the H100's fast run against the H100's plain run only, though the H200's plain run was faster
    assert entries["lora", "NVIDIA H100 80GB HBM3"]["speedup"] == pytest.approx(1500 / 700)
    assert "speedup" not in entries["lora", "NVIDIA H200"]
    text = table.render(list(entries.values()))
    assert "| lora | H200 | | | fast: not run |" in text and "| lora | H100 | 700 | 1,500 | 2.14× |" in text


def test_mfu_of_an_earlier_record_is_worked_out_from_its_config(table, tiny_row):
    from tunerkit.estimate import utilisation

    row = tiny_row("lora", name="lora")
    record = {"metrics": {"tokens_per_s": 1000.0, "memory": [{"device": "cuda"}]},
              "environment": {"device_name": "NVIDIA H200"}, "config": row.config()}
    assert table.mfu_pct(record) == pytest.approx(utilisation(row, 1000.0, "NVIDIA H200")["mfu_pct"])
    record["metrics"]["mfu_pct"] = 12.5  # recorded by the row itself: taken as it is
    assert table.mfu_pct(record) == 12.5
    record["metrics"] = {"tokens_per_s": 1000.0, "memory": [{"device": "cpu"}]}
    assert table.mfu_pct(record) is None
