"""Answer extraction, file discovery and accuracy arithmetic of the benchmark evaluators (no model)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tunerkit.errors import UserError
from tunerkit.eval import arc, ceval, files, gsm8k

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.mark.parametrize("reply, expected", [
    ("#### 1,234", Decimal(1234)),
    ("so the total is 12 + 3 = 15.\n#### 15", Decimal(15)),
    ("It fell to -7 degrees.\n#### -7", Decimal(-7)),
    ("#### \u22127", Decimal(-7)),  # unicode minus
    ("Each costs 3.50 dollars. The answer is 3.50.", Decimal("3.5")),
    ("The answer is $5.", Decimal(5)),
    ("She pays 5 dollars", Decimal(5)),
    ("First 2 then 8 and finally 1,000,000 people", Decimal(1000000)),
    ("ages 5-6", Decimal(6)),  # a hyphen between numbers is no minus sign
    ("#### 12\nWait, recount: #### 14", Decimal(14)),  # the last marker wins
    ("answer is 9, not 10 as some said", Decimal(9)),
    ("The share is .5 of the cake", Decimal("0.5")),
    ("12,34 apples", Decimal(34)),  # no thousands grouping: two numbers
    ("I do not know.", None),
    ("####", None),
    ("", None),
])
def test_extract_answer_edge_cases(reply, expected):
    assert gsm8k.extract_answer(reply) == expected


def test_numeric_match_ignores_formatting():
    gold = "work...\n#### 1,248"
    assert gsm8k.is_correct("There are 1248 seats.", gold)
    assert gsm8k.is_correct("#### 1,248.00", gold)
    assert gsm8k.is_correct("$1,248", gold)
    assert not gsm8k.is_correct("#### 1247", gold)
    assert not gsm8k.is_correct("no idea", gold)
    assert gsm8k.is_correct("it is 3.5", "#### 3.50")


def test_gold_answer_needs_its_marker():
    with pytest.raises(UserError):
        gsm8k.gold_answer("the answer is 4")


def test_every_fixture_gold_parses():
    for record in files.read_records(FIXTURES / "gsm8k" / "test.jsonl"):
        assert gsm8k.gold_answer(record["answer"]) is not None
        # a reply that copies the worked solution is graded correct
        assert gsm8k.is_correct(record["answer"], record["answer"])


def test_split_files_understand_official_and_hub_layouts(tmp_path):
    for rel in ["arc/ARC-Challenge-Test.jsonl", "arc/ARC-Easy/test-00000-of-00001.parquet",
                "arc/ARC-Challenge-Train.jsonl", "arc/ARC-Challenge-Dev.jsonl", "arc/notes.txt",
                "ceval/val/computer_network_val.csv", "ceval/art_studies/validation-00000-of-00001.parquet",
                "ceval/dev/computer_network_dev.csv"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    names = lambda task, split: [str(p.relative_to(tmp_path / task)) for p in files.split_files(tmp_path / task, split)]
    assert names("arc", "test") == ["ARC-Challenge-Test.jsonl", "ARC-Easy/test-00000-of-00001.parquet"]
    assert names("arc", "train") == ["ARC-Challenge-Train.jsonl"]
    assert names("ceval", "val") == ["art_studies/validation-00000-of-00001.parquet", "val/computer_network_val.csv"]
    assert names("ceval", "dev") == ["dev/computer_network_dev.csv"]
    folder = tmp_path / "ceval"
    assert ceval.subject_of({}, folder / "val" / "computer_network_val.csv", folder) == "computer_network"
    assert ceval.subject_of({}, folder / "art_studies" / "validation-00000-of-00001.parquet", folder) == "art_studies"
    assert ceval.subject_of({"subject": "law"}, folder / "val.jsonl", folder) == "law"
    assert ceval.subject_of({}, folder / "val.jsonl", folder) == "all"
    assert arc.subset_of(tmp_path / "arc" / "ARC-Easy" / "test-00000-of-00001.parquet", tmp_path / "arc") == "easy"


def test_parquet_records_come_back_as_plain_python(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    record = {"id": "x", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    pd.DataFrame([record]).to_parquet(tmp_path / "test.parquet")
    (back,) = files.read_records(tmp_path / "test.parquet")
    assert arc.normalize(back) == {"question": "Q?", "choices": ["a", "b"], "answer": 1}


def test_arc_answer_keys_match_letters_or_digits():
    assert arc.answer_index(["A", "B", "C", "D"], "C") == 2
    assert arc.answer_index(["1", "2", "3", "4"], "4") == 3
    assert arc.answer_index(["A", "B", "C"], "2") == 1  # digit key, letter labels
    assert arc.answer_index(["1", "2", "3"], "b") == 1  # letter key, digit labels
    with pytest.raises(UserError):
        arc.answer_index(["A", "B"], "E")


def test_arc_reads_both_public_schemas():
    hub = files.read_records(FIXTURES / "arc" / "ARC-Challenge-test.jsonl")
    ai2 = files.read_records(FIXTURES / "arc" / "ARC-Easy-test.jsonl")
    assert isinstance(hub[0]["question"], str) and isinstance(ai2[0]["question"], dict)
    assert arc.normalize(hub[0])["answer"] == 1
    assert arc.normalize(hub[3])["answer"] == 3  # labels 1-4, key "4"
    easy = arc.normalize(ai2[0])
    assert easy["choices"] == ["solid", "liquid", "gas"] and easy["answer"] == 0


def test_interleave_keeps_every_group_and_the_limit():
    groups = {"a": [1, 2, 3, 4], "b": [10], "c": [20, 21]}
    assert files.interleave(groups, 5) == {"a": [1, 2], "b": [10], "c": [20, 21]}
    assert files.interleave(groups, 2) == {"a": [1], "b": [10]}
    assert files.interleave(groups, None) is groups


def test_weighted_accuracy_counts_every_item_once():
    weighted, macro = files.weighted_summary({"big": (90, 100), "small": (0, 10)})
    assert weighted == pytest.approx(90 / 110)
    assert macro == pytest.approx((0.9 + 0.0) / 2)
    assert files.weighted_summary({}) == (0.0, 0.0)


def test_missing_data_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="eval_data_dir"):
        files.task_dir(None, "gsm8k")
    with pytest.raises(UserError, match="no folder"):
        files.task_dir(tmp_path, "arc")
    (tmp_path / "ceval").mkdir()
    (tmp_path / "ceval" / "test.jsonl").write_text(json.dumps(
        {"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": ""}) + "\n")
    with pytest.raises(UserError, match="no C-Eval val file with answers"):
        ceval.load(tmp_path)


def test_rows_with_file_tasks_are_checked_before_they_run(tmp_path):
    from tunerkit.eval.extra import check_settings
    from tunerkit.recipe import make_row

    def reason(**settings):
        return check_settings(make_row("r", [], model="tiny-llama", **settings).settings)

    assert reason(evaluate=["eval_loss", "infer_speed"]) is None
    assert "eval_data_dir is not set" in reason(evaluate=["arc"])
    assert reason(evaluate=["arc", "ceval", "gsm8k"], eval_data_dir=str(FIXTURES)) is None
    (tmp_path / "arc").mkdir()
    assert "no ceval/ folder" in reason(evaluate=["arc", "ceval"], eval_data_dir=str(tmp_path))
