"""Accuracy on the builtin graded task (the offline default's quality column)."""

from __future__ import annotations

import torch

from tunerkit.data import builtin
from tunerkit.data.chat import prompt_ids

TEST_ITEMS = 40  # held-out problems per row unless eval_limit says otherwise


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, device,
                     batch_size: int = 8) -> list[str]:
    """Greedy replies, batched with left padding."""
    was_training = model.training
    model.eval()
    replies: list[str] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(conversations), batch_size):
        chunk = [prompt_ids(tokenizer, c) for c in conversations[start:start + batch_size]]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(chunk):
            ids[i, width - len(seq):] = torch.as_tensor(seq)
            mask[i, width - len(seq):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
        for row in out[:, width:]:
            replies.append(tokenizer.decode(row, skip_special_tokens=True))
    model.train(was_training)
    return replies


def task_name(ctx) -> str | None:
    spec = ctx.settings.dataset
    return spec.split(":", 1)[1] if spec.startswith("builtin:") else None


def builtin_accuracy(ctx) -> dict:
    name = task_name(ctx)
    if name is None:
        return {}
    task = builtin.TASKS[name]
    # Keywords, not positions: the generator also takes the split, and a swapped call would
    # grade training problems (and `seed` of them) instead of held-out ones.
    items = task["test"](split="test", n=ctx.settings.eval_limit or TEST_ITEMS, seed=ctx.settings.seed)
    convs = [p.messages(with_answer=False) for p in items]
    replies = generate_replies(ctx.unwrapped_model(), ctx.tokenizer, convs, ctx.settings.max_new_tokens, ctx.device)
    correct = sum(task["grade"](r, p.answer) for r, p in zip(replies, items))
    return {"accuracy": correct / len(items), "accuracy_items": len(items),
            "accuracy_examples": [{"q": p.question, "a": p.answer, "reply": r} for p, r in list(zip(items, replies))[:3]]}
