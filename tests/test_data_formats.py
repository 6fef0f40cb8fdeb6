"""Local data files: schema detection per file, conversion, tolerant reading of cut-off files."""

from __future__ import annotations

import json

import pytest

from tunerkit.data import formats, sources
from tunerkit.errors import UserError

ALPACA = [{"instruction": "Add", "input": "2 and 3", "output": "5"},
          {"instruction": "Say hi", "input": "", "output": "hi", "system": "Be brief."}]
MESSAGES = [{"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]}]
SHAREGPT = [{"id": "a", "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                          {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"},
                                          {"from": "gpt", "value": "A2"}]},
            {"id": "b", "conversations": [{"from": "human", "value": "only"}, {"from": "gpt", "value": "one"}]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_jsonl_is_detected_and_converted(tmp_path):
    records = formats.read_records(write_jsonl(tmp_path / "a.jsonl", ALPACA))
    assert records[0] == {"messages": [{"role": "user", "content": "Add\n\n2 and 3"},
                                       {"role": "assistant", "content": "5"}]}
    assert records[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert records[1]["messages"][1] == {"role": "user", "content": "Say hi"}


def test_messages_json_array(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(MESSAGES, indent=2))
    assert formats.read_records(path) == MESSAGES


def test_sharegpt_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(SHAREGPT), path)
    records = formats.read_records(path)
    assert [m["role"] for m in records[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert records[0]["messages"][4] == {"role": "assistant", "content": "A2"}
    assert len(records) == 2


def test_query_response_history_schema(tmp_path):
    row = {"query": "q2", "response": "r2", "history": [["q1", "r1"]], "system": "sys"}
    records = formats.read_records(write_jsonl(tmp_path / "qr.jsonl", [row]))
    assert [(m["role"], m["content"]) for m in records[0]["messages"]] == [
        ("system", "sys"), ("user", "q1"), ("assistant", "r1"), ("user", "q2"), ("assistant", "r2")]


def test_unknown_schema_is_one_line_listing_the_accepted_ones(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "?", "answer": "!"}])
    with pytest.raises(UserError) as info:
        formats.read_records(path)
    text = str(info.value)
    assert "\n" not in text
    for schema in ("messages", "alpaca", "sharegpt", "conversations from/value", "instruction/input/output"):
        assert schema in text


def test_record_breaking_the_files_schema_is_named(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [ALPACA[0], ALPACA[0], {"instruction": "no output"}])
    with pytest.raises(UserError, match="record 3"):
        formats.read_records(path)


def _cut(text: str, marker: str, offset: int = 0) -> str:
    return text[: text.index(marker) + offset]


@pytest.mark.parametrize("cut_at", ["mid-string", "mid-key", "after-comma", "after-record"])
def test_truncated_json_array_keeps_whole_records(tmp_path, cut_at, capsys):
    rows = [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]}
            for i in range(5)]
    text = json.dumps(rows, indent=2)
    fourth = text.index("question 3")
    cut = {"mid-string": text[: fourth + 5],  # inside "question 3"
           "mid-key": _cut(text[fourth:], '"from"', 3),
           "after-comma": None, "after-record": None}[cut_at]
    if cut_at == "mid-key":
        cut = text[:fourth] + cut
    if cut_at in ("after-comma", "after-record"):
        # The fourth record starts right after "},"; cut just after the comma or before it.
        start = text.rindex("{", 0, text.rindex("conversations", 0, fourth))
        cut = text[:start].rstrip()
        cut = cut if cut_at == "after-comma" else cut.rstrip(",")
    path = tmp_path / "cut.json"
    path.write_text(cut)
    records = formats.read_records(path)
    assert len(records) == 3
    assert records[2]["messages"][1]["content"] == "answer 2"
    assert "kept its 3 whole records" in capsys.readouterr().err


def test_corrupt_json_in_the_middle_is_an_error_not_a_truncation(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"messages": []},\n {"messages": [}],\n {"messages": []}]')
    with pytest.raises(UserError, match="line 2"):
        formats.read_records(path)


def test_jsonl_with_cut_last_line_keeps_whole_lines(tmp_path, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", ALPACA)
    path.write_text(path.read_text() + '{"instruction": "cut', encoding="utf-8")
    assert len(formats.read_records(path)) == 2
    assert "last line" in capsys.readouterr().err


def test_string_encoded_turn_lists_are_parsed(tmp_path):
    row = {"conversations": str([{"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}])}
    records = formats.read_records(write_jsonl(tmp_path / "s.jsonl", [row]))
    assert records[0]["messages"][1] == {"role": "assistant", "content": "yo"}


def test_sources_reject_unknown_file_types_early(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported data file type"):
        sources.check_source(str(path), "dataset")
    with pytest.raises(UserError, match="not found"):
        sources.check_source(str(tmp_path / "missing.jsonl"), "dataset")
