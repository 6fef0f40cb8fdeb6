"""C-Eval: Chinese exam multiple choice over many subjects, scored by log-likelihood of the answer letter.

Schema (one record per question): ``question``, ``A``, ``B``, ``C``, ``D``, ``answer``
(a letter), optionally ``id``, ``explanation`` and ``subject``. The subject is the
``subject`` column when present, else the file's name (``computer_network_val.csv`` ->
``computer_network``) or its folder (``computer_network/val-00000-of-00001.parquet``).

The official test split has no answers, so the ``val`` split is scored (test records are
used only when ``val`` is missing, and only those with an answer). Few-shot examples come
from the ``dev`` split of the same subject. Prompt, in the official format::

    以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。

    {question}
    A. ...
    B. ...
    C. ...
    D. ...
    答案：

and the pick is the letter A-D whose token(s) get the highest log-likelihood next.
``ceval_weighted_acc`` counts every question once (per-subject accuracies weighted by
subject size: ms-swift's "weighted acc"); ``ceval_macro_acc`` is the plain mean over subjects.
"""

from __future__ import annotations

import re

from tunerkit.errors import UserError
from tunerkit.eval.files import ALIASES, interleave, metric_key, read_records, split_files, task_dir, weighted_summary
from tunerkit.eval.loglik import choice_accuracy

LETTERS = ("A", "B", "C", "D")
_SPLIT_SUFFIX = re.compile(r"(^|[_\-])(val|validation|dev|test|train)([_\-].*)?$", re.IGNORECASE)


def subject_of(record: dict, path, folder) -> str:
    if record.get("subject"):
        return str(record["subject"])
    stem = _SPLIT_SUFFIX.sub("", path.stem)
    if stem:
        return stem
    parent = path.parent
    split_words = {w for names in ALIASES.values() for w in names}
    if parent != folder and parent.name.lower() not in split_words:
        return parent.name
    return "all"


def normalize(record: dict) -> dict:
    answer = str(record.get("answer") or "").strip().upper()
    return {"question": str(record["question"]), "options": [str(record[k]) for k in LETTERS],
            "answer": LETTERS.index(answer) if answer in LETTERS else None}


def _grouped(folder, split) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for path in split_files(folder, split):
        for record in read_records(path):
            item = normalize(record)
            if item["answer"] is not None:  # official test rows carry no answer
                groups.setdefault(subject_of(record, path, folder), []).append(item)
    return dict(sorted(groups.items()))


def load(data_dir, limit: int | None = None) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(scored items by subject, dev items by subject) from ``<data_dir>/ceval``."""
    folder = task_dir(data_dir, "ceval")
    tests = _grouped(folder, "val") or _grouped(folder, "test")
    if not tests:
        raise UserError(f"no C-Eval val file with answers in {folder}",
                        hint="expected e.g. ceval/val/computer_network_val.csv or ceval/val.jsonl with a subject column")
    return interleave(tests, limit), _grouped(folder, "dev")


def block(item: dict, with_answer: bool) -> str:
    lines = [item["question"], *(f"{letter}. {text}" for letter, text in zip(LETTERS, item["options"]))]
    answer = LETTERS[item["answer"]] if with_answer else ""
    return "\n".join(lines) + f"\n答案：{answer}"


def context(subject: str, item: dict, shots: list[dict]) -> str:
    header = f"以下是中国关于{subject.replace('_', ' ')}考试的单项选择题，请选出其中的正确答案。\n\n"
    return header + "".join(block(s, True) + "\n\n" for s in shots) + block(item, False)


def evaluate(model, tokenizer, data_dir, device, *, limit=None, fewshot=0, batch_size: int = 8,
             max_length: int | None = None, scorer=None) -> dict:
    tests, dev = load(data_dir, limit)
    groups, used_shots = {}, 0
    for subject, items in tests.items():
        shots = dev.get(subject, [])[:fewshot]
        used_shots = max(used_shots, len(shots))
        groups[subject] = [{"context": context(subject, it, shots), "continuations": list(LETTERS),
                            "answer": it["answer"]} for it in items]
    per_subject = choice_accuracy(model, tokenizer, groups, device, batch_size=batch_size, max_length=max_length,
                                  scorer=scorer)["loglik"]
    weighted, macro = weighted_summary(per_subject)
    metrics = {"ceval_weighted_acc": weighted, "ceval_macro_acc": macro, "ceval_method": "loglik of answer letter A-D",
               "ceval_fewshot": used_shots, "ceval_subjects": len(per_subject),
               "ceval_items": sum(n for _, n in per_subject.values())}
    for subject, (correct, total) in per_subject.items():
        metrics[f"ceval_acc_{metric_key(subject)}"] = correct / total
    return metrics


def evaluator(ctx) -> dict:
    s = ctx.settings
    return evaluate(ctx.unwrapped_model(), ctx.tokenizer, s.eval_data_dir, ctx.device, limit=s.eval_limit,
                    fewshot=s.eval_fewshot, batch_size=s.eval_batch_size, max_length=s.max_length)
