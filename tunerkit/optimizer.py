"""The core's optimizer rules, in one place for the core and for plugins that build their
own parameter groups or schedules."""

from __future__ import annotations


def decays(name: str, param) -> bool:
    """Weight decay applies to matrices, never to biases or norm weights."""
    return param.ndim >= 2 and "norm" not in name.lower()


def groups_by_decay(named_params, weight_decay: float) -> list[dict]:
    """Trainable parameters in a decayed and an undecayed group (empty groups dropped)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_schedule(ctx, optimizer):
    """The row's learning-rate schedule (``lr_scheduler``, ``warmup_ratio``) over its planned steps."""
    from transformers import get_scheduler

    warmup = int(ctx.settings.warmup_ratio * ctx.total_steps)
    return get_scheduler(ctx.settings.lr_scheduler, optimizer, num_warmup_steps=warmup,
                         num_training_steps=max(ctx.total_steps, 1))
