"""ARC, C-Eval and GSM8K evaluators on the fixture files: structure on tiny-llama, picks and weighting on stubs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunerkit.data.chat import prompt_ids
from tunerkit.eval import arc, ceval, files, gsm8k, loglik

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    from tunerkit.data.chat import ensure_template
    from tunerkit.models import loading

    source = loading.resolve_model("tiny-llama")
    model = loading.load_pretrained(source, torch.float32, CPU, "sdpa")
    tokenizer = loading.load_tokenizer(source)
    ensure_template(tokenizer, None)
    return model, tokenizer


class LetterLover(torch.nn.Module):
    """A stub causal LM whose every next-token distribution strongly prefers one token."""

    def __init__(self, token_id: int, vocab: int):
        super().__init__()
        self.token_id, self.vocab = token_id, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **_):
        keep = logits_to_keep or input_ids.shape[1]
        logits = torch.zeros(input_ids.shape[0], keep, self.vocab)
        logits[..., self.token_id] = 10.0
        return SimpleNamespace(logits=logits)


def answers_by_subject():
    counts = {}
    for path in files.split_files(FIXTURES / "ceval", "val"):
        for record in files.read_records(path):
            counts.setdefault(ceval.subject_of(record, path, FIXTURES / "ceval"), []).append(record["answer"])
    return counts


def test_ceval_stub_that_always_says_b(tiny):
    _, tokenizer = tiny
    b_token = tokenizer("答案：B", add_special_tokens=False)["input_ids"][-1]
    assert tokenizer.decode([b_token]) == "B"
    m = ceval.evaluate(LetterLover(b_token, len(tokenizer)), tokenizer, FIXTURES, CPU)
    answers = answers_by_subject()
    for subject, letters in answers.items():
        assert m[f"ceval_acc_{subject}"] == pytest.approx(letters.count("B") / len(letters))
    all_letters = [a for letters in answers.values() for a in letters]
    assert m["ceval_weighted_acc"] == pytest.approx(all_letters.count("B") / len(all_letters))
    assert m["ceval_items"] == 12 and m["ceval_subjects"] == 3


def fake_scorer(correct_for: set[str]):
    """Scores 1 for the right continuation in groups ``correct_for`` and for a wrong one elsewhere.

    Fill ``score.key`` (context -> right continuation) and ``score.group_of`` (context -> group).
    """

    def score(model, tokenizer, pairs, device, batch_size=8, max_length=None):
        out = []
        for context, cont in pairs:
            right = cont == score.key[context]
            wanted = right if score.group_of[context] in correct_for else not right
            out.append((1.0 if wanted else 0.0, 1))
        return out

    score.key, score.group_of = {}, {}
    return score


def test_arc_weighting_with_known_scores():
    tests, _ = arc.load(FIXTURES)
    scorer = fake_scorer({"challenge"})
    for name, items in tests.items():
        for it in items:
            context = arc.context(it["question"], [])
            scorer.key[context] = " " + it["choices"][it["answer"]]
            scorer.group_of[context] = name
    m = arc.evaluate(None, None, FIXTURES, CPU, scorer=scorer)
    assert m["arc_acc_challenge"] == 1.0 and m["arc_acc_easy"] == 0.0
    assert m["arc_acc"] == pytest.approx(7 / 12)  # 7 challenge items right, 5 easy items wrong
    assert m["arc_method"] == "loglik" and m["arc_items"] == 12


def test_ceval_weighted_and_macro_accuracy_with_known_scores():
    tests, _ = ceval.load(FIXTURES)
    scorer = fake_scorer({"computer_network"})
    for subject, items in tests.items():
        for it in items:
            context = ceval.context(subject, it, [])
            scorer.key[context] = "ABCD"[it["answer"]]
            scorer.group_of[context] = subject
    m = ceval.evaluate(None, None, FIXTURES, CPU, scorer=scorer)
    # computer_network 5/5, high_school_physics 0/4, modern_chinese_history 0/3
    assert m["ceval_acc_computer_network"] == 1.0 and m["ceval_acc_high_school_physics"] == 0.0
    assert m["ceval_weighted_acc"] == pytest.approx(5 / 12)
    assert m["ceval_macro_acc"] == pytest.approx(1 / 3)


def test_fewshot_contexts_come_from_train_and_dev():
    seen = []

    def record(model, tokenizer, pairs, device, batch_size=8, max_length=None):
        seen.extend(pairs)
        return [(0.0, 1)] * len(pairs)

    m = arc.evaluate(None, None, FIXTURES, CPU, fewshot=2, limit=2, scorer=record)
    assert m["arc_fewshot"] == 2
    assert all(ctx.startswith("Question: Which object is attracted to a magnet?\nAnswer: an iron nail\n\n")
               for ctx, _ in seen)
    seen.clear()
    m = ceval.evaluate(None, None, FIXTURES, CPU, fewshot=1, scorer=record)
    assert m["ceval_fewshot"] == 1
    physics = [ctx for ctx, _ in seen if "high school physics" in ctx]
    assert physics and all("国际单位制中，力的单位是？" in ctx and "答案：C\n\n" in ctx for ctx in physics)


def test_limit_spreads_over_subsets():
    tests, _ = ceval.load(FIXTURES, limit=6)
    assert {k: len(v) for k, v in tests.items()} == {"computer_network": 2, "high_school_physics": 2,
                                                      "modern_chinese_history": 2}


def test_arc_and_ceval_on_tiny_llama(tiny):
    model, tokenizer = tiny
    m = arc.evaluate(model, tokenizer, FIXTURES, CPU, fewshot=1, limit=6)
    assert m["arc_items"] == 6 and m["arc_fewshot"] == 1
    assert {"arc_acc", "arc_acc_norm", "arc_acc_challenge", "arc_acc_easy"} <= set(m)
    assert all(0.0 <= m[k] <= 1.0 for k in ("arc_acc", "arc_acc_norm", "arc_acc_challenge", "arc_acc_easy"))
    m = ceval.evaluate(model, tokenizer, FIXTURES, CPU, limit=6)
    assert m["ceval_items"] == 6 and 0.0 <= m["ceval_weighted_acc"] <= 1.0
    assert m["ceval_method"].startswith("loglik")


def test_batched_scores_equal_single_scores(tiny):
    model, tokenizer = tiny
    pairs = [("Question: Which planet is closest to the Sun?\nAnswer:", " Mercury"),
             ("Q: 2+2=", " 4"),
             ("以下是中国关于law考试的单项选择题。\n答案：", "C"),
             ("A much longer context that pads the other rows of the batch quite a bit more.\nAnswer:", " the end")]
    batched = loglik.score_continuations(model, tokenizer, pairs, CPU, batch_size=4)
    single = [loglik.score_continuations(model, tokenizer, [p], CPU)[0] for p in pairs]
    for (b, nb), (s, ns) in zip(batched, single):
        assert nb == ns >= 1
        assert b == pytest.approx(s, abs=1e-3)
    # a continuation's score is its tokens' log-probs: never positive
    assert all(score <= 0 for score, _ in batched)


def test_gsm8k_accuracy_from_replies(monkeypatch, tiny):
    model, tokenizer = tiny
    tests, _ = gsm8k.load(FIXTURES)
    import tunerkit.eval.graded as graded

    def replies(model, tokenizer, convs, max_new_tokens, device, batch_size=8):
        # right for even items (in a different format than the gold), wrong for odd ones
        return [f"So the answer is ${gsm8k.gold_answer(t['answer']):,}." if i % 2 == 0 else "I think 0.5"
                for i, t in enumerate(tests[: len(convs)])]

    monkeypatch.setattr(graded, "generate_replies", replies)
    m = gsm8k.evaluate(model, tokenizer, FIXTURES, CPU, fewshot=2)
    assert m["gsm8k_items"] == 12 and m["gsm8k_fewshot"] == 2
    assert m["gsm8k_acc"] == pytest.approx(6 / 12)


def test_gsm8k_generates_on_tiny_llama(tiny):
    model, tokenizer = tiny
    m = gsm8k.evaluate(model, tokenizer, FIXTURES, CPU, limit=2, fewshot=1, max_new_tokens=4)
    assert m["gsm8k_items"] == 2 and 0.0 <= m["gsm8k_acc"] <= 1.0
    assert len(m["gsm8k_examples"]) == 2 and m["gsm8k_method"].startswith("generate")
    _, shots = gsm8k.load(FIXTURES, fewshot=1)
    prompt = tokenizer.decode(prompt_ids(tokenizer, gsm8k.conversation("Q?", shots)))
    assert "#### 23" in prompt and "Q?" in prompt  # the few-shot solution is an earlier assistant turn


def test_builtin_accuracy_grades_eval_limit_held_out_problems(monkeypatch):
    """The graded items are `eval_limit` problems of the test split, none of them a training problem."""
    import tunerkit.eval.graded as graded
    from tunerkit.data import builtin

    asked = []

    def replies(model, tokenizer, convs, max_new_tokens, device, batch_size=8):
        asked.extend(c[-1]["content"] for c in convs)
        return ["0"] * len(convs)

    monkeypatch.setattr(graded, "generate_replies", replies)
    settings = SimpleNamespace(dataset="builtin:arithmetic", eval_limit=7, seed=42, max_new_tokens=4)
    ctx = SimpleNamespace(settings=settings, unwrapped_model=lambda: None, tokenizer=None, device=CPU)
    m = graded.builtin_accuracy(ctx)
    assert m["accuracy_items"] == 7 and len(asked) == 7 == len(set(asked))
    trained = {r["messages"][1]["content"] for r in builtin.train_records(2000, 42)}
    assert not trained & set(asked)
    assert asked == [p.question for p in builtin.problems("test", 7, 42)]
