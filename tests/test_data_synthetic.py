"""synthetic:lengths: ms-swift's published length statistics, deterministic by seed."""

from __future__ import annotations

import numpy as np
import pytest

from tunerkit.data import sources
from tunerkit.data.synthetic import DISTRIBUTIONS, resolve_stats, sample_lengths, synthetic_records
from tunerkit.errors import UserError


def test_default_is_cls_fudan_news_zh_and_matches_its_stats():
    stats = resolve_stats("synthetic:lengths")
    assert (stats.mean, stats.sd, stats.min, stats.max) == (3234.4, 2547.5, 91, 19548)
    lengths = sample_lengths(stats, 300_000, np.random.default_rng(0))
    assert lengths.min() >= 91 and lengths.max() <= 19548
    assert abs(lengths.mean() - 3234.4) / 3234.4 < 0.01
    assert abs(lengths.std() - 2547.5) / 2547.5 < 0.02


def test_records_are_deterministic_by_seed():
    spec = "synthetic:lengths?rows=20&max=4000"
    a, b = synthetic_records(spec, 1000, seed=3), synthetic_records(spec, 1000, seed=3)
    assert a == b and len(a) == 20
    assert synthetic_records(spec, 1000, seed=4) != a
    assert all(10 <= t < 1000 for r in a for t in r["input_ids"])
    assert all(r["labels"] == r["input_ids"] and 91 <= len(r["input_ids"]) <= 4000 for r in a)


def test_fixed_length_distribution_and_overrides():
    recs = synthetic_records("synthetic:lengths?dist=long-alpaca-12k&rows=3", 500, seed=0)
    assert [len(r["input_ids"]) for r in recs] == [DISTRIBUTIONS["long-alpaca-12k"].mean] * 3
    custom = resolve_stats("synthetic:lengths?mean=100&sd=10&min=50&max=200&rows=7")
    assert (custom.mean, custom.sd, custom.rows) == (100.0, 10.0, 7)


@pytest.mark.parametrize("spec", ["synthetic:lengths?dist=nope", "synthetic:tokens", "synthetic:lengths?rowz=3",
                                  "synthetic:lengths?mean=abc", "synthetic:lengths?min=500&max=100"])
def test_bad_specs_fail_in_one_line(spec):
    with pytest.raises(UserError) as info:
        sources.check_source(spec, "dataset")
    assert "\n" not in str(info.value)
