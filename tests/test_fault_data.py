"""Bad data files name the file, the line or record and what is wrong; masking is linear in turns."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from tunerkit.data.formats import check_vocabulary, read_records
from tunerkit.errors import UserError

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_lines(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_not_utf8_names_the_line(tmp_path, suffix):
    good = json.dumps(CHAT).encode()
    path = write_lines(tmp_path / f"d{suffix}", [good, good, b'{"messages": "\xff\xfe"}'])
    with pytest.raises(UserError, match=r"d\.json.*line 3 is not UTF-8"):
        read_records(path)


def test_bad_json_in_the_middle_names_the_line(tmp_path):
    good = json.dumps(CHAT).encode()
    path = write_lines(tmp_path / "d.jsonl", [good, b"{not json", good])
    with pytest.raises(UserError, match=r"line 2 is not valid JSON"):
        read_records(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_too_deeply_nested_is_an_error_not_a_crash(tmp_path, suffix):
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b"[" + deep + b"]" if suffix == ".json" else deep
    path = write_lines(tmp_path / f"d{suffix}", [body])
    with pytest.raises(UserError, match="nested too deeply"):
        read_records(path)


def test_a_broken_parquet_names_the_file(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 64)
    with pytest.raises(UserError, match=r"d\.parquet.*not readable parquet"):
        read_records(path)


@pytest.mark.parametrize("ids, what", [([1, -3], r"input_ids\[1\] is -3"), ([1, 2.5], r"input_ids\[1\] is 2\.5"),
                                       ([1, "7"], r"input_ids\[1\] is '7'"), ([True], r"input_ids\[0\] is True"),
                                       ("1 2 3", "input_ids is a str")])
def test_token_records_must_hold_integer_ids(tmp_path, ids, what):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"input_ids": [1, 2]}) + "\n" + json.dumps({"input_ids": ids}) + "\n")
    with pytest.raises(UserError, match=r"t\.jsonl: record 2: " + what):
        read_records(path)


def test_ids_outside_the_vocabulary_name_the_record(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"input_ids": [1, 2]}) + "\n" + json.dumps({"input_ids": [1, 99], "labels": [-100, 99]}))
    records = read_records(path)
    check_vocabulary(records, 100, str(path))
    with pytest.raises(UserError, match=r"record 2: input_ids holds id 99, outside the model's vocabulary of 50"):
        check_vocabulary(records, 50, str(path))


def test_nothing_left_says_which_filter_removed_what():
    from tunerkit.guards import nothing_left

    ctx = SimpleNamespace(settings=SimpleNamespace(max_train_samples=10, max_length=32, truncation_strategy="delete"),
                          metrics={"train_samples_dropped": 7, "train_samples_without_labels": 3},
                          state={"core:records": {"train": [{}] * 10}})
    text = nothing_left(ctx)
    assert "of 10 records" in text and "max_train_samples=10 kept 10" in text
    assert "max_length=32 dropped 7" in text and "3 had no label token" in text


def test_a_row_whose_samples_are_all_too_long_says_so(tiny_row, tmp_path):
    from tunerkit.errors import RowFailed
    from tunerkit.loop import run_row

    with pytest.raises(RowFailed, match=r"max_length=8 dropped \d+"):
        run_row(tiny_row("lora", max_length=8, evaluate=[]), tmp_path)


# -- label masking ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from tunerkit.models.loading import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


def conversation(turns: int, system: bool = True) -> list[dict]:
    msgs = [{"role": "system", "content": "Be terse."}] if system else []
    for i in range(turns):
        msgs += [{"role": "user", "content": f"What is {i} + {i}? "}, {"role": "assistant", "content": f" It is {2 * i}."}]
    return msgs


@pytest.mark.parametrize("template", ["chatml", "qwen", "llama3", "gemma", "plain", None])
@pytest.mark.parametrize("system", [True, False])
def test_offset_masking_equals_the_per_turn_renderings(smollm2, template, system):
    import copy

    from tunerkit.data.chat import _labels_by_offsets, _labels_by_prefixes, encode_messages, ensure_template

    tok = copy.deepcopy(smollm2)
    ensure_template(tok, template)
    for msgs in (conversation(3, system), conversation(1, system)[:-1] + [{"role": "assistant", "content": ""}]):
        enc = encode_messages(tok, msgs)
        assert _labels_by_offsets(tok, msgs) == enc  # the linear way applies to every named template
        ids = tok.apply_chat_template(msgs, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        assert enc["input_ids"] == ids
        old = _labels_by_prefixes(tok, msgs, ids)
        if msgs[-1]["content"]:
            assert enc["labels"] == old
        else:
            # An empty answer: the per-turn renderings can also label prompt tokens that BPE splits
            # differently where the prompt ends ("\n\n" vs "\n", "\n"); offsets label only the turn.
            labelled = [i for i, l in enumerate(enc["labels"]) if l != -100]
            assert labelled and all(old[i] == enc["labels"][i] for i in labelled)


def test_masking_time_grows_with_the_text_not_turns_times_text(smollm2):
    from tunerkit.data.chat import encode_messages

    def seconds(turns):
        msgs = conversation(turns)
        t = time.perf_counter()
        encode_messages(smollm2, msgs)
        return time.perf_counter() - t

    seconds(20)  # warm-up
    short, long = min(seconds(200) for _ in range(2)), seconds(2000)
    # Ten times the turns: linear work takes ~10x, per-turn renderings ~100x. Generous for a shared CPU.
    assert long / short < 35, (short, long)


def test_an_over_long_sample_is_rendered_once_before_it_is_deleted(smollm2, monkeypatch):
    import copy

    from tunerkit.data.chat import encode_messages
    from tunerkit.data.truncation import apply_truncation

    tok = copy.deepcopy(smollm2)
    renders = []
    real = type(tok).apply_chat_template

    def counting(self, *args, **kwargs):
        renders.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tok), "apply_chat_template", counting)
    msgs = conversation(200)
    kept = encode_messages(tok, msgs)
    renders_of_a_kept_sample = len(renders)
    renders.clear()
    over = encode_messages(tok, msgs, deleted_over=len(kept["input_ids"]) - 1)
    assert len(renders) == 1 < renders_of_a_kept_sample  # the turn-finding renderings are skipped
    assert over["input_ids"] == kept["input_ids"]
    assert apply_truncation([over], len(kept["input_ids"]) - 1, "delete") == ([], {"samples_dropped": 1, "samples_truncated": 0})
    # A sample that fits gets its labels exactly as without the limit.
    assert encode_messages(tok, msgs, deleted_over=len(kept["input_ids"])) == kept
