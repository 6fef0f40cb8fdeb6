"""Reports say how far each table's memory is from ms-swift's, per GPU, and why beyond 15 %."""

from tunerkit.report.memory_vs_seed import gaps, memory_note


def _record(name, reserved, allocated, seed):
    memory = [{"device": f"cuda:{i}", "peak_reserved_gib": r, "peak_allocated_gib": a}
              for i, (r, a) in enumerate(zip(reserved, allocated))]
    return {"row": name, "status": "ok", "config": {}, "reference": {"memory_gib": seed},
            "metrics": {"memory": memory}}


def test_gap_per_gpu_and_reason_beyond_tolerance():
    records = [_record("close", [20.0], [18.0], 21.0),
               _record("cached", [50.0], [22.0], 35.0),      # reserved far above allocated
               _record("smaller", [10.0], [9.5], 16.0),      # below ms-swift's
               _record("two-gpu", [30.0, 36.0], [28.0, 34.0], [35.0, 35.0]),  # largest GPU against largest
               {"row": "failed", "status": "failed", "config": {}, "reference": {"memory_gib": 9.0}, "metrics": {}}]
    found = {g["row"]: g for g in gaps(records)}
    assert set(found) == {"close", "cached", "smaller", "two-gpu"}
    assert abs(found["two-gpu"]["gap"] - (36 / 35 - 1)) < 1e-9
    note = memory_note(records)
    assert "over 4 rows" in note
    assert "cached +43% (allocator" in note and "smaller -38% (allocation" in note
    assert "close" not in note.split("beyond")[1] and "two-gpu" not in note.split("beyond")[1]


def test_no_note_without_seed_memory():
    assert memory_note([{"row": "x", "status": "ok", "config": {}, "reference": {}, "metrics": {}}]) is None
