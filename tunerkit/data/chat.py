"""Chat formatting and tokenization with loss on assistant tokens only."""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100

#: Named fallbacks for tokenizers that ship no chat template.
TEMPLATES = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Qwen(1)-chat's own format: chatml with its default system prompt.
    "qwen": (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
        "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
        " + m['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "plain": (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + eos_token + '\n' }}"
        "{% else %}{{ m['content'] + '\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
    ),
}


def ensure_template(tokenizer, name: str | None) -> None:
    """Use the named fallback when asked, or when the tokenizer has no template at all."""
    if name is not None:
        if name not in TEMPLATES:
            from tunerkit.errors import UserError

            raise UserError(f"unknown chat template '{name}'", key="chat_template",
                            hint=f"known: {', '.join(TEMPLATES)}; leave it unset to use the tokenizer's own")
        tokenizer.chat_template = TEMPLATES[name]
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = TEMPLATES["chatml"]


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def _ids(tokenizer, messages, add_generation_prompt) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_messages(tokenizer, messages: list[dict], *, train_on_prompt: bool = False) -> dict[str, Any]:
    """Token ids and labels of a conversation; labels are -100 outside assistant turns.

    Each assistant turn's tokens are found by rendering the conversation up to the turn's
    generation prompt and up to the end of the turn, so any template works. Both bounds
    are where those renderings stop agreeing with the full one: a template whose
    generation prompt ends in a space ("Assistant: ") sees that space merge into the
    answer's first token, and the turn then starts at the merged token.
    """
    input_ids = _ids(tokenizer, messages, add_generation_prompt=False)
    if train_on_prompt:
        return {"input_ids": input_ids, "labels": list(input_ids)}
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common_prefix(_ids(tokenizer, messages[:i], add_generation_prompt=True), input_ids) if i else 0
        end = _common_prefix(_ids(tokenizer, messages[: i + 1], add_generation_prompt=False), input_ids)
        labels[start:end] = input_ids[start:end]
    return {"input_ids": input_ids, "labels": labels}


def encode_record(tokenizer, record: dict, *, system: str | None = None, train_on_prompt: bool = False) -> dict:
    """A record of either canonical shape (chat or already tokenized) as input_ids/labels."""
    if "input_ids" in record:
        return record
    return encode_messages(tokenizer, with_system(record["messages"], system), train_on_prompt=train_on_prompt)


def has_labels(encoded: dict) -> bool:
    """Whether the causal loss scores any token of the sample (the first position predicts nothing)."""
    return any(label != IGNORE_INDEX for label in encoded["labels"][1:])


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a conversation ending in a generation prompt (for evaluation)."""
    return _ids(tokenizer, messages, add_generation_prompt=True)
