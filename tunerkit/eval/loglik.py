"""Log-likelihood of continuations: how multiple-choice tasks are scored.

For each (context, continuation) pair the score is the sum of the log-probabilities of
the continuation's tokens after the context. Tokens are split the way evaluation
harnesses do it: the continuation's tokens are what encoding ``context + continuation``
adds after the context's own tokens, so a word keeps its usual leading-space token.
"""

from __future__ import annotations

import torch


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    # A trailing space belongs to the continuation ("Answer:" + " Paris"), as BPE vocabularies expect.
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    ctx_ids = tokenizer(stripped, add_special_tokens=True)["input_ids"]
    whole = tokenizer(stripped + continuation, add_special_tokens=True)["input_ids"]
    if whole[: len(ctx_ids)] == ctx_ids and len(whole) > len(ctx_ids):
        return ctx_ids, whole[len(ctx_ids):]
    return ctx_ids, tokenizer(continuation, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def score_continuations(model, tokenizer, pairs: list[tuple[str, str]], device, batch_size: int = 8,
                        max_length: int | None = None) -> list[tuple[float, int]]:
    """``(sum of log-probs, continuation tokens)`` of every pair, batched.

    Left padding (with matching position ids) lines every sequence's end up, so the head
    computes logits only for the last positions that score continuation tokens.
    Over-long sequences lose tokens from the left of the context (``max_length``).
    """
    was_training = model.training
    model.eval()
    encoded = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        seq = ctx + cont
        if max_length is not None and len(seq) > max_length:
            seq = seq[-max_length:]
        encoded.append((seq, min(len(cont), len(seq) - 1)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Longest first keeps padding low inside each batch; results go back in input order.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    by_index: dict[int, tuple[float, int]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i][0]) for i in chunk)
        keep = max(encoded[i][1] for i in chunk) + 1
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            seq = encoded[i][0]
            ids[row, width - len(seq):] = torch.as_tensor(seq)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=keep).logits  # [batch, keep, vocab]: positions width-keep .. width-1
        for row, i in enumerate(chunk):
            seq, n_cont = encoded[i]
            # logits at position t predict token t + 1; the last position predicts nothing
            picked = logits[row, keep - 1 - n_cont: keep - 1].float().log_softmax(-1)
            targets = torch.as_tensor(seq[len(seq) - n_cont:], device=picked.device)
            by_index[i] = (float(picked.gather(-1, targets[:, None]).sum()), n_cont)
        del logits
    model.train(was_training)
    return [by_index[i] for i in range(len(encoded))]


def choose(scores: list[float]) -> int:
    """Index of the best score (the first one on ties)."""
    return max(range(len(scores)), key=lambda i: scores[i])


def choice_accuracy(model, tokenizer, groups: dict[str, list[dict]], device, batch_size: int = 8,
                    max_length: int | None = None, scorer=None) -> dict[str, dict[str, tuple[int, int]]]:
    """Multiple-choice accuracy per group, raw and length-normalised.

    ``groups`` maps a subset name to items ``{"context": str, "continuations": [str, ...],
    "answer": index}``. The pick is the continuation with the highest summed log-likelihood
    ("loglik"), or the highest per character ("loglik_norm"). Returns
    ``{"loglik": {group: (correct, total)}, "loglik_norm": {...}}``. ``scorer`` replaces
    :func:`score_continuations` (tests use it to feed known scores).
    """
    scorer = scorer or score_continuations
    pairs, owners = [], []
    for name, items in groups.items():
        for index, item in enumerate(items):
            for cont in item["continuations"]:
                pairs.append((item["context"], cont))
                owners.append((name, index))
    scores = scorer(model, tokenizer, pairs, device, batch_size=batch_size, max_length=max_length) if pairs else []
    per_item: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for owner, (_, cont), (total, _) in zip(owners, pairs, scores):
        per_item.setdefault(owner, []).append((total, max(len(cont.strip()), 1)))
    out = {"loglik": {}, "loglik_norm": {}}
    for name, items in groups.items():
        raw = norm = 0
        for index, item in enumerate(items):
            scored = per_item[(name, index)]
            raw += choose([s for s, _ in scored]) == item["answer"]
            norm += choose([s / chars for s, chars in scored]) == item["answer"]
        out["loglik"][name] = (raw, len(items))
        out["loglik_norm"][name] = (norm, len(items))
    return out
