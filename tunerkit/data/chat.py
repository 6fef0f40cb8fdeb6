"""Chat formatting and tokenization with loss on assistant tokens only."""

from __future__ import annotations

import bisect
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
    # Gemma's turn format (Gemma has no system role: a system message opens the first user turn).
    "gemma": (
        "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}{% else %}"
        "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + ns.system"
        " + m['content'] + '<end_of_turn>\n' }}{% set ns.system = '' %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
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


def encode_messages(tokenizer, messages: list[dict], *, train_on_prompt: bool = False,
                    deleted_over: int | None = None) -> dict[str, Any]:
    """Token ids and labels of a conversation; labels are -100 outside assistant turns.

    An assistant turn's labels run from the end of its generation prompt to the end of the
    turn (its end-of-turn tokens included). A template whose generation prompt ends in a
    space ("Assistant: ") sees that space merge into the answer's first token, and the turn
    then starts at the merged token. The conversation is rendered and tokenized once, the
    turns found by character offsets (:func:`_labels_by_offsets`): the cost grows with the
    text, not with turns times text. Tokenizers without offsets, and templates that do not
    render turns as plain pieces of the whole, take :func:`_labels_by_prefixes`.

    ``deleted_over``: a conversation longer than this many tokens is about to be deleted
    (truncation_strategy "delete"), so it is rendered and tokenized once and its labels are
    left unworked (all -100): the extra renderings that find the turns are spent only on
    samples that are kept.
    """
    if train_on_prompt:
        input_ids = _ids(tokenizer, messages, add_generation_prompt=False)
        return {"input_ids": input_ids, "labels": list(input_ids)}
    found = _labels_by_offsets(tokenizer, messages, deleted_over)
    if found is not None:
        return found
    input_ids = _ids(tokenizer, messages, add_generation_prompt=False)
    if deleted_over is not None and len(input_ids) > deleted_over:
        return _unlabelled(input_ids)
    return {"input_ids": input_ids, "labels": _labels_by_prefixes(tokenizer, messages, input_ids)}


def _unlabelled(input_ids: list[int]) -> dict[str, Any]:
    return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * len(input_ids)}


def _labels_by_prefixes(tokenizer, messages: list[dict], input_ids: list[int]) -> list[int]:
    """Each assistant turn's bounds as where the conversation rendered up to the turn's
    generation prompt, and up to the turn's end, stop agreeing with the full rendering:
    any template works, at one rendering per turn (quadratic in the number of turns)."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common_prefix(_ids(tokenizer, messages[:i], add_generation_prompt=True), input_ids) if i else 0
        end = _common_prefix(_ids(tokenizer, messages[: i + 1], add_generation_prompt=False), input_ids)
        labels[start:end] = input_ids[start:end]
    return labels


# Private-use characters marking where assistant contents begin and end in one rendering.
_OPEN, _CLOSE = "\ue000", "\ue001"


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _turn_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]] | None:
    """(the rendered text, each assistant turn's (start, end) characters) from one rendering
    with marked contents; None when the template does not keep the contents intact."""
    if any(_OPEN in m["content"] or _CLOSE in m["content"] for m in messages):
        return None
    marked = [{**m, "content": f"{_OPEN}{m['content']}{_CLOSE}"} if m["role"] == "assistant" else m
              for m in messages]
    try:
        probe = _render(tokenizer, [{"role": "user", "content": "x"},
                                    {"role": "assistant", "content": f"{_OPEN}y{_CLOSE}"}])
    except Exception:  # a template with its own rules on roles: the per-turn way still works
        return None
    suffix = probe[probe.rfind(_CLOSE) + 1:]  # what the template writes after an assistant turn's content
    text, spans = [], []
    pieces = _render(tokenizer, marked).split(_OPEN)
    text.append(pieces[0])
    pos = len(pieces[0])
    for piece in pieces[1:]:
        content, sep, rest = piece.partition(_CLOSE)
        if not sep or not rest.startswith(suffix):
            return None
        spans.append((pos, pos + len(content) + len(suffix)))
        text.append(content + rest)
        pos += len(content) + len(rest)
    return "".join(text), spans


def _labels_by_offsets(tokenizer, messages: list[dict], deleted_over: int | None = None) -> dict[str, Any] | None:
    if not getattr(tokenizer, "is_fast", False):
        return None
    plain = _render(tokenizer, messages)
    enc = tokenizer(plain, add_special_tokens=False, return_offsets_mapping=True)
    if deleted_over is not None and len(enc["input_ids"]) > deleted_over:
        return _unlabelled(list(enc["input_ids"]))
    found = _turn_spans(tokenizer, messages)
    if found is None:
        return None
    text, spans = found
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(spans) != len(turns) or text != plain:
        return None
    # The first turn's generation prompt and the last turn's end must be where the marks put them.
    if turns and turns[0] and _render(tokenizer, messages[:turns[0]], True) != text[:spans[0][0]]:
        return None
    last = plain if turns and turns[-1] == len(messages) - 1 else None
    if turns and (last or _render(tokenizer, messages[: turns[-1] + 1])) != text[:spans[-1][1]]:
        return None
    input_ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]  # text == plain: tokenized above
    labels = [IGNORE_INDEX] * len(input_ids)
    ends = [end for _, end in offsets]
    for (first, last), i in zip(spans, turns):
        # Tokens wholly before the turn's content are prompt; tokens wholly inside its end are the turn.
        start = 0 if i == 0 else bisect.bisect_right(ends, first)
        stop = bisect.bisect_right(ends, last)
        labels[start:stop] = input_ids[start:stop]
    return {"input_ids": input_ids, "labels": labels}


def encode_record(tokenizer, record: dict, *, system: str | None = None, train_on_prompt: bool = False,
                  deleted_over: int | None = None) -> dict:
    """A record of either canonical shape (chat or already tokenized) as input_ids/labels."""
    if "input_ids" in record:
        return record
    return encode_messages(tokenizer, with_system(record["messages"], system), train_on_prompt=train_on_prompt,
                           deleted_over=deleted_over)


def has_labels(encoded: dict) -> bool:
    """Whether the causal loss scores any token of the sample (the first position predicts nothing)."""
    return any(label != IGNORE_INDEX for label in encoded["labels"][1:])


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a conversation ending in a generation prompt (for evaluation)."""
    return _ids(tokenizer, messages, add_generation_prompt=True)
