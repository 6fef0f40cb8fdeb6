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


def encode_messages(tokenizer, messages: list[dict], *, train_on_prompt: bool = False) -> dict[str, Any]:
    """Token ids and labels of a conversation; labels are -100 outside assistant turns.

    Each assistant turn's tokens are found as the difference between the rendering up to
    the turn's generation prompt and the rendering including the turn, so any template works.
    """
    input_ids = _ids(tokenizer, messages, add_generation_prompt=False)
    if train_on_prompt:
        return {"input_ids": input_ids, "labels": list(input_ids)}
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], add_generation_prompt=True)) if i else 0
        end = len(_ids(tokenizer, messages[: i + 1], add_generation_prompt=False))
        labels[start:end] = input_ids[start:end]
    return {"input_ids": input_ids, "labels": labels}


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a conversation ending in a generation prompt (for evaluation)."""
    return _ids(tokenizer, messages, add_generation_prompt=True)
