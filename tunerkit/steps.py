"""How many optimizer steps a row's run plans: the loop uses it before training, and the
estimate to draw the same micro-batches the loop will train."""

from __future__ import annotations

import math


def planned_steps(s, batches: int, mean_tokens: float = 0.0, replicas: int = 1) -> int:
    """``max_steps`` when set; else ``epochs`` over ``batches`` micro-batches an epoch (shared by
    ``replicas`` data-parallel processes), cut to what the token budget needs at ``mean_tokens``
    a sample (read only with a token budget)."""
    if s.max_steps:
        return s.max_steps
    per_epoch = math.ceil(math.ceil(batches / replicas) / s.gradient_accumulation_steps)
    steps = max(1, math.ceil(per_epoch * s.epochs))
    if s.token_budget:
        per_step = mean_tokens * s.batch_size * s.gradient_accumulation_steps * replicas
        steps = min(steps, max(1, math.ceil(s.token_budget / per_step)))
    return steps
