"""max_length strategies and their counts."""

from __future__ import annotations

import pytest

from tunerkit.data.truncation import apply_truncation

RECORDS = [{"input_ids": list(range(n)), "labels": [-100] * (n // 2) + list(range(n // 2, n))} for n in (3, 8, 5, 10)]


def test_delete_drops_long_samples_and_counts_them():
    kept, counts = apply_truncation(RECORDS, 5, "delete")
    assert [len(r["input_ids"]) for r in kept] == [3, 5]
    assert counts == {"samples_dropped": 2, "samples_truncated": 0}


def test_truncation_right_keeps_the_start():
    kept, counts = apply_truncation(RECORDS, 5, "truncation_right")
    assert counts == {"samples_dropped": 0, "samples_truncated": 2}
    assert kept[1]["input_ids"] == [0, 1, 2, 3, 4] and kept[1]["labels"] == [-100] * 4 + [4]


def test_truncation_left_keeps_the_end():
    kept, counts = apply_truncation(RECORDS, 5, "truncation_left")
    assert counts["samples_truncated"] == 2
    assert kept[3]["input_ids"] == [5, 6, 7, 8, 9] and kept[3]["labels"] == [5, 6, 7, 8, 9]
    assert all(len(r["input_ids"]) == len(r["labels"]) <= 5 for r in kept)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown truncation_strategy"):
        apply_truncation(RECORDS, 5, "middle")
