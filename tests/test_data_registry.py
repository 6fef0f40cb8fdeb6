"""Registry names: hub ids, ms-swift's conversions, local copies, the offline message."""

from __future__ import annotations

import json

import pytest

from tunerkit.data import registry, sources
from tunerkit.errors import UserError


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNERKIT_DATA_DIR", str(tmp_path))
    return tmp_path


def test_every_seed_name_is_registered():
    for name in ("ms-agent", "ms-bench", "ms-bench-mini", "cls-fudan-news-zh", "long-alpaca-12k",
                 "dureader-robust-zh", "pileval"):
        assert name in registry.DATASETS
        assert sources.kind_of(name) == "registry"
    assert registry.DATASETS["long-alpaca-12k"].hf == "Yukang/LongAlpaca-12k"
    assert str(registry.DATASETS["ms-bench"]) == "ModelScope iic/ms_bench"


def test_unknown_name_suggests_a_close_one():
    with pytest.raises(UserError, match="did you mean 'ms-bench'"):
        sources.check_source("ms-bnech", "dataset")


def test_offline_without_a_local_copy_says_where_to_put_it(data_dir):
    with pytest.raises(UserError) as info:
        registry.load("ms-bench")
    text = str(info.value)
    assert "\n" not in text and "not reachable" in text
    assert str(data_dir / "ms-bench.jsonl") in text


def test_local_copy_gets_the_seeds_ms_bench_conversion(data_dir):
    rows = [{"conversations": str([{"from": "system", "value": "You are a helpful assistant."},
                                   {"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}])},
            {"conversations": str([{"from": "user", "value": "Are you MOSS?"}, {"from": "assistant", "value": "no"}])}]
    (data_dir / "ms-bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = registry.load("ms-bench")
    assert records == [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    assert sources.load_records("ms-bench", seed=0, vocab_size=100, rows=None) == records


def test_fixed_size_subset_is_seeded(data_dir, monkeypatch):
    rows = [{"conversations": [{"from": "user", "value": f"q{i}"}, {"from": "assistant", "value": f"a{i}"}]}
            for i in range(10)]
    (data_dir / "ms-bench-mini.json").write_text(json.dumps(rows))
    small = registry.Entry("iic/ms_bench", convert=registry._ms_bench, sample=4)
    monkeypatch.setitem(registry.DATASETS, "ms-bench-mini", small)
    first, second = registry.load("ms-bench-mini"), registry.load("ms-bench-mini")
    assert len(first) == 4 and first == second


def test_local_copy_already_in_chat_shape_is_kept(data_dir):
    rows = [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    (data_dir / "cls-fudan-news-zh.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert registry.load("cls-fudan-news-zh") == rows


def test_seed_conversions():
    assert registry._fudan_news({"prompt": "news", "answer": "sports"})["messages"][1]["content"] == "sports"
    assert registry._long_alpaca({"instruction": "Q", "output": "Answer: 42"})["messages"][1]["content"] == "42"
    qg = registry._dureader({"text1": "Paris[SEP]Paris is the capital of France.", "text2": "What is the capital?"})
    assert "Context: Paris is the capital of France.\nAnswer: Paris\nQuestion:" in qg["messages"][0]["content"]
    assert qg["messages"][1]["content"] == "What is the capital?"
    assert registry._plain_text({"text": "abc"}) == {"messages": [{"role": "assistant", "content": "abc"}]}
