"""Checks a row makes on what it trains: a non-finite loss, nothing left to train."""

from __future__ import annotations

import math

from tunerkit.errors import RowFailed


def check_losses(losses: list[float]) -> None:
    """Fail the row at the first NaN or infinite step loss: its numbers would mean nothing."""
    for step, loss in enumerate(losses, start=1):
        if not math.isfinite(loss):
            raise RowFailed(f"loss became {loss} at step {step}")


def nothing_left(ctx) -> str:
    """Why no training sample is left: how many records each filter removed."""
    s, m = ctx.settings, ctx.metrics
    loaded = len(((ctx.state.get("core:records") or {}).get("train")) or [])
    parts = []
    if s.max_train_samples is not None:
        parts.append(f"max_train_samples={s.max_train_samples} kept {min(loaded, s.max_train_samples)}")
    if m.get("train_samples_dropped"):
        parts.append(f"max_length={s.max_length} dropped {m['train_samples_dropped']} "
                     f"(truncation_strategy={s.truncation_strategy!r})")
    if m.get("train_samples_without_labels"):
        parts.append(f"{m['train_samples_without_labels']} had no label token (no assistant turn, or empty ids)")
    detail = "; ".join(parts) or "the training split is empty"
    return f"no training samples left of {loaded} records: {detail}"
