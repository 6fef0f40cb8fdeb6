"""Chat templates and loss masking on the real SmolLM2 tokenizer."""

from __future__ import annotations

import copy

import pytest

from tunerkit.data.chat import (IGNORE_INDEX, TEMPLATES, encode_messages, encode_record, ensure_template, has_labels,
                                prompt_ids, with_system)
from tunerkit.errors import UserError

CONVERSATION = [{"role": "system", "content": "Be terse."},
                {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+5?"}, {"role": "assistant", "content": "It is 8."}]


@pytest.fixture(scope="module")
def smollm2():
    from tunerkit.models.loading import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


def labelled_text(tok, enc) -> str:
    return tok.decode([i for i, l in zip(enc["input_ids"], enc["labels"]) if l != IGNORE_INDEX])


def test_loss_only_on_assistant_turns_multi_turn(smollm2):
    enc = encode_messages(smollm2, CONVERSATION)
    assert len(enc["input_ids"]) == len(enc["labels"])
    assert labelled_text(smollm2, enc) == "4<|im_end|>\nIt is 8.<|im_end|>\n"
    # Labels equal the ids wherever they are set, and the prompt side is entirely masked.
    assert all(l in (IGNORE_INDEX, i) for i, l in zip(enc["input_ids"], enc["labels"]))
    prompt = smollm2.apply_chat_template(CONVERSATION[:2], tokenize=True, add_generation_prompt=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    assert enc["input_ids"][: len(prompt)] == list(prompt)
    assert all(l == IGNORE_INDEX for l in enc["labels"][: len(prompt)])


def test_train_on_prompt_labels_everything(smollm2):
    enc = encode_messages(smollm2, CONVERSATION, train_on_prompt=True)
    assert enc["labels"] == enc["input_ids"]


def test_prompt_ids_end_with_the_generation_prompt(smollm2):
    ids = prompt_ids(smollm2, CONVERSATION[:2])
    assert smollm2.decode(ids).endswith("<|im_start|>assistant\n")


def test_system_prompt_and_records(smollm2):
    msgs = CONVERSATION[1:3]
    assert with_system(msgs, "S")[0] == {"role": "system", "content": "S"}
    assert with_system(CONVERSATION, "other") is CONVERSATION  # an explicit system turn wins
    enc = encode_record(smollm2, {"messages": msgs}, system="Answer in digits.")
    assert "Answer in digits." in smollm2.decode(enc["input_ids"])
    assert has_labels(enc)
    tokens = {"input_ids": [1, 2, 3], "labels": [1, 2, 3]}
    assert encode_record(smollm2, tokens) is tokens
    assert not has_labels({"input_ids": [5, 6], "labels": [5, IGNORE_INDEX]})


@pytest.mark.parametrize("name, expected", [
    ("chatml", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"),
    ("qwen", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"),
    ("plain", "User: What is 2+2?\nAssistant: 4<|im_end|>\n"),
    ("llama3", "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"),
    ("gemma", "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"),
])
def test_named_fallback_templates(smollm2, name, expected):
    tok = copy.deepcopy(smollm2)
    ensure_template(tok, name)
    assert tok.chat_template == TEMPLATES[name]
    text = tok.apply_chat_template(CONVERSATION[1:3], tokenize=False)
    assert text.startswith(expected) or expected in text
    enc = encode_messages(tok, CONVERSATION[1:])
    assert "It is 8." in labelled_text(tok, enc) and "And 3+5?" not in labelled_text(tok, enc)


def test_tokenizer_without_template_gets_chatml_and_unknown_names_fail(smollm2):
    tok = copy.deepcopy(smollm2)
    tok.chat_template = None
    ensure_template(tok, None)
    assert tok.chat_template == TEMPLATES["chatml"]
    with pytest.raises(UserError, match="unknown chat template 'chatlm'"):
        ensure_template(tok, "chatlm")


def test_gemma_template_opens_the_first_user_turn_with_the_system_message(smollm2):
    tok = copy.deepcopy(smollm2)
    ensure_template(tok, "gemma")
    text = tok.apply_chat_template([{"role": "system", "content": "Be terse."}, *CONVERSATION[1:3]],
                                   tokenize=False, add_generation_prompt=False)
    assert "<start_of_turn>user\nBe terse.\n\nWhat is 2+2?<end_of_turn>" in text
    assert "<start_of_turn>system" not in text
