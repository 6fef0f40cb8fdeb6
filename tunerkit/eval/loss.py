"""Eval loss: token-weighted mean cross-entropy on the held-out split."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from tunerkit.precision import forward_autocast


@torch.no_grad()
def mean_token_loss(model, dataset, collator, batch_size: int, device) -> float | None:
    if not dataset:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
        batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        total += torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                   shift_labels.reshape(-1), ignore_index=-100,
                                                   reduction="sum").item()
        count += int((shift_labels != -100).sum())
    model.train(was_training)
    return total / count if count else None


def eval_loss(ctx) -> dict:
    ds = ctx.datasets.get("eval")
    if ds is None:
        return {}
    with forward_autocast(ctx):  # the numerics the row trained with
        loss = mean_token_loss(ctx.unwrapped_model(), ds, ctx.collators["eval"], ctx.settings.eval_batch_size,
                               ctx.device)
    return {} if loss is None else {"eval_loss": loss}
