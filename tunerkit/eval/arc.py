"""ARC (AI2 Reasoning Challenge): science multiple choice, scored by log-likelihood.

Schema, either the hub's ``ai2_arc`` one::

    {"id": ..., "question": "...", "choices": {"text": [...], "label": ["A", "B", ...]}, "answerKey": "B"}

or AI2's original one (``"question": {"stem": ..., "choices": [{"text", "label"}, ...]}``).
Labels may be letters or digits ("1".."4"); answer keys are matched to them.

Each choice is scored as the continuation " <choice text>" of "Question: <q>\\nAnswer:"
(the evaluation-harness format); the pick is the highest summed log-likelihood
(``arc_acc``) or the highest per character (``arc_acc_norm``). Subsets (Challenge, Easy)
are found from the file names; ``arc_acc`` counts every item once over all of them.
"""

from __future__ import annotations

from tunerkit.errors import UserError
from tunerkit.eval.files import interleave, metric_key, path_words, read_records, split_files, task_dir, weighted_summary
from tunerkit.eval.loglik import choice_accuracy

SUBSETS = ("challenge", "easy")


def normalize(record: dict) -> dict:
    """``{"question", "choices": [texts], "answer": index}`` from either public schema."""
    question = record["question"]
    if isinstance(question, dict):  # AI2's original layout
        choices = question["choices"]
        texts, labels = [c["text"] for c in choices], [str(c["label"]) for c in choices]
        question = question["stem"]
    else:
        texts, labels = list(record["choices"]["text"]), [str(x) for x in record["choices"]["label"]]
    return {"question": question, "choices": texts, "answer": answer_index(labels, record["answerKey"])}


def answer_index(labels: list[str], key) -> int:
    """Position of ``key`` among ``labels``; "A"/"1" also name the first choice when labels differ."""
    key = str(key).strip()
    if key in labels:
        return labels.index(key)
    if key.isdigit() and 1 <= int(key) <= len(labels):
        return int(key) - 1
    if len(key) == 1 and key.isalpha() and 0 <= ord(key.upper()) - ord("A") < len(labels):
        return ord(key.upper()) - ord("A")
    raise UserError(f"ARC answer key {key!r} matches none of the labels {labels}")


def subset_of(path, folder) -> str:
    words = path_words(path, folder)
    for name in SUBSETS:
        if name in words:
            return name
    return path.stem.lower()


def _grouped(folder, split) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for path in split_files(folder, split):
        groups.setdefault(subset_of(path, folder), []).extend(normalize(r) for r in read_records(path))
    return groups


def load(data_dir, limit: int | None = None) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(test items by subset, few-shot pool by subset) from ``<data_dir>/arc``."""
    folder = task_dir(data_dir, "arc")
    tests = _grouped(folder, "test")
    if not tests:
        raise UserError(f"no ARC test file in {folder}", hint="expected e.g. arc/ARC-Challenge-test.jsonl")
    pool = _grouped(folder, "train") or _grouped(folder, "dev") or _grouped(folder, "validation")
    return interleave(tests, limit), pool


def context(question: str, shots: list[dict]) -> str:
    parts = [f"Question: {s['question']}\nAnswer: {s['choices'][s['answer']]}\n\n" for s in shots]
    return "".join(parts) + f"Question: {question}\nAnswer:"


def evaluate(model, tokenizer, data_dir, device, *, limit=None, fewshot=0, batch_size: int = 8,
             max_length: int | None = None, scorer=None) -> dict:
    tests, pool = load(data_dir, limit)
    everyone = [item for items in pool.values() for item in items]
    groups, used_shots = {}, 0
    for name, items in tests.items():
        shots = (pool.get(name) or everyone)[:fewshot]
        used_shots = max(used_shots, len(shots))
        groups[name] = [{"context": context(it["question"], shots), "continuations": [" " + c for c in it["choices"]],
                         "answer": it["answer"]} for it in items]
    results = choice_accuracy(model, tokenizer, groups, device, batch_size=batch_size, max_length=max_length,
                              scorer=scorer)
    acc, _ = weighted_summary(results["loglik"])
    acc_norm, _ = weighted_summary(results["loglik_norm"])
    metrics = {"arc_acc": acc, "arc_acc_norm": acc_norm, "arc_method": "loglik", "arc_fewshot": used_shots,
               "arc_items": sum(n for _, n in results["loglik"].values())}
    for name, (correct, total) in results["loglik"].items():
        metrics[f"arc_acc_{metric_key(name)}"] = correct / total
    return metrics


def evaluator(ctx) -> dict:
    s = ctx.settings
    return evaluate(ctx.unwrapped_model(), ctx.tokenizer, s.eval_data_dir, ctx.device, limit=s.eval_limit,
                    fewshot=s.eval_fewshot, batch_size=s.eval_batch_size, max_length=s.max_length)
