"""GSM8K: grade-school math word problems, scored by exact numeric match of the final answer.

Schema (one record per problem): ``question`` and ``answer``, the answer being a worked
solution whose last line is ``#### <number>``. The model answers by greedy generation in
the tokenizer's chat template; few-shot examples (from the train file) are earlier
user/assistant turns whose replies end in ``#### <number>``, which the instruction asks for.

The reply's answer is the number after its last ``####``, else the number after
"answer is", else its last number. Numbers compare as decimals after dropping thousands
separators, currency signs and units: "1,234" == "1234", "3.50" == "3.5", "$5" == "5".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from tunerkit.eval.files import path_words, read_records, split_files, task_dir
from tunerkit.errors import UserError

#: worked solutions need room: fewer new tokens than this cut most of them off
MIN_NEW_TOKENS = 256
INSTRUCTION = "Solve the problem step by step. End with a final line of the form '#### <number>'."

# A number: optional minus (not after a digit: "5-6" is two numbers), digits with proper
# thousands groups or plain digits, optional decimals.
_NUMBER = re.compile(r"(?<![\d])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\d])-?\.\d+")
_MARKERS = (re.compile(r"####"), re.compile(r"answer is", re.IGNORECASE))


def parse_number(text: str) -> Decimal | None:
    """The first number in ``text`` as a Decimal (commas, $ and units ignored), or None."""
    text = text.replace("\u2212", "-").replace("$", "")
    match = _NUMBER.search(text)
    if match is None:
        return None
    try:
        return Decimal(match.group(0).replace(",", ""))
    except InvalidOperation:
        return None


def extract_answer(reply: str) -> Decimal | None:
    """The final answer of a model's reply (or of a gold solution)."""
    reply = reply.replace("\u2212", "-").replace("$", "")
    for marker in _MARKERS:
        hits = list(marker.finditer(reply))
        if hits:
            value = parse_number(reply[hits[-1].end():])
            if value is not None:
                return value
    numbers = _NUMBER.findall(reply)
    if not numbers:
        return None
    try:
        return Decimal(numbers[-1].replace(",", ""))
    except InvalidOperation:
        return None


def gold_answer(answer: str) -> Decimal:
    if "####" not in answer:
        raise UserError("a gsm8k answer lacks its '#### <number>' line", hint=answer[:60])
    value = parse_number(answer.rsplit("####", 1)[1])
    if value is None:
        raise UserError("a gsm8k answer has no number after '####'", hint=answer[-60:])
    return value


def is_correct(reply: str, answer: str) -> bool:
    predicted = extract_answer(reply)
    return predicted is not None and predicted == gold_answer(answer)


def _files(folder, split):
    # The hub's "socratic" variant repeats the main problems with sub-questions: main only.
    return [p for p in split_files(folder, split) if "socratic" not in path_words(p, folder)]


def load(data_dir, limit: int | None = None, fewshot: int = 0) -> tuple[list[dict], list[dict]]:
    """(test problems, few-shot examples) from ``<data_dir>/gsm8k``."""
    folder = task_dir(data_dir, "gsm8k")
    tests = [r for p in _files(folder, "test") for r in read_records(p)]
    if not tests:
        raise UserError(f"no gsm8k test file in {folder}", hint="expected e.g. gsm8k/test.jsonl")
    shots = []
    if fewshot:
        shots = [r for p in _files(folder, "train") for r in read_records(p)][:fewshot]
    return tests[:limit] if limit is not None else tests, shots


def conversation(question: str, shots: list[dict]) -> list[dict]:
    messages = []
    for shot in shots:
        messages += [{"role": "user", "content": f"{shot['question']}\n{INSTRUCTION}"},
                     {"role": "assistant", "content": shot["answer"]}]
    return messages + [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]


def evaluate(model, tokenizer, data_dir, device, *, limit=None, fewshot=0, max_new_tokens=MIN_NEW_TOKENS,
             batch_size: int = 8) -> dict:
    from tunerkit.eval.graded import generate_replies

    tests, shots = load(data_dir, limit, fewshot)
    convs = [conversation(t["question"], shots) for t in tests]
    replies = generate_replies(model, tokenizer, convs, max_new_tokens, device, batch_size=batch_size)
    correct = [is_correct(r, t["answer"]) for r, t in zip(replies, tests)]
    return {"gsm8k_acc": sum(correct) / len(tests), "gsm8k_items": len(tests), "gsm8k_fewshot": len(shots),
            "gsm8k_method": "generate (greedy, chat template)", "gsm8k_max_new_tokens": max_new_tokens,
            "gsm8k_examples": [{"q": t["question"][:200], "gold": str(gold_answer(t["answer"])), "reply": r[-200:]}
                               for t, r in list(zip(tests, replies))[:3]]}


def evaluator(ctx) -> dict:
    s = ctx.settings
    return evaluate(ctx.unwrapped_model(), ctx.tokenizer, s.eval_data_dir, ctx.device, limit=s.eval_limit,
                    fewshot=s.eval_fewshot, max_new_tokens=max(s.max_new_tokens, MIN_NEW_TOKENS),
                    batch_size=s.eval_batch_size)
