"""Mixing a general dataset into train only: int(len(train) * ratio) rows appended."""

from __future__ import annotations

from types import SimpleNamespace

from tunerkit.core import CoreDefaults
from tunerkit.data.sources import mix_in


def test_mix_in_appends_int_len_times_ratio_rows():
    train = [{"id": i} for i in range(7)]
    general = [{"g": i} for i in range(100)]
    mixed = mix_in(train, general, 2.0, seed=1)
    assert mixed[:7] == train and len(mixed) == 7 + 14
    assert all(r in general for r in mixed[7:]) and len({r["g"] for r in mixed[7:]}) == 14  # no repeats
    assert mix_in(train, general, 2.0, seed=1) == mixed
    assert len(mix_in(train, general, 0.5, seed=1)) == 7 + 3  # int(3.5)
    assert mix_in(train, general, 0.0, seed=1) == train
    assert len(mix_in(train, general[:3], 1.0, seed=1)) == 14  # more than the general set: drawn with repeats


def test_core_mixes_into_train_but_not_into_eval(tiny_row):
    row = tiny_row("lora", mix={"dataset": "builtin:arithmetic", "ratio": 0.5})
    plain = tiny_row("lora")

    def records(r):
        model = SimpleNamespace(config=SimpleNamespace(vocab_size=1000))
        ctx = SimpleNamespace(settings=r.settings, state={}, unwrapped_model=lambda: model)
        return CoreDefaults()._all_records(ctx)

    mixed, base = records(row), records(plain)
    assert len(base["train"]) == 16 and len(mixed["train"]) == 16 + 8
    assert mixed["train"][:16] == base["train"]
    assert mixed["eval"] == base["eval"]
