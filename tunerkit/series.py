"""Per-step series: a value per optimizer step, stored with the row and drawn as a curve.

Series live in the row's metrics under ``"series"`` (``{name: [[step, value], ...]}``), so
they reach the database with the record and ``tunerkit plot`` draws one curve per row.
A plugin records its own from any training hook::

    tunerkit.series.record(ctx, "my_value", value)

and declares it as ``tunerkit.MetricSpec("my_value", series=True)`` for a labelled figure.
"""

from __future__ import annotations

from tunerkit.hookspecs import hookimpl
from tunerkit.metricspec import MetricSpec

KEY = "series"

#: the series every trained row records (grad_norm where a plugin computes it, e.g. ``track``)
CORE_SERIES = (
    MetricSpec("lr", "learning rate", format=".3g", series=True),
    MetricSpec("grad_norm", "gradient norm (before clipping)", format=".3g", series=True),
)


def record(ctx, name: str, value, step: int | None = None) -> None:
    """Append ``value`` at ``step`` (default: the optimizer step now running, counted from 1).

    ``value`` may be a 0-d tensor still on the device: it is read when the record is
    stored, so recording never waits for the GPU."""
    step = ctx.global_step + 1 if step is None else step
    ctx.metrics.setdefault(KEY, {}).setdefault(name, []).append([step, value])


def series_of(metrics: dict) -> dict[str, list[list[float]]]:
    return (metrics or {}).get(KEY) or {}


def current_lr(ctx) -> float | None:
    """The learning rate this step uses (of the first parameter group)."""
    scheduler = ctx.scheduler
    if scheduler is not None and hasattr(scheduler, "get_last_lr"):
        return float(scheduler.get_last_lr()[0])
    groups = getattr(ctx.optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


class StepSeries:
    """The core's series: the learning rate of every step, read on the host (no device work)."""

    @hookimpl
    def on_before_optimizer_step(self, ctx):
        lr = current_lr(ctx)
        if lr is not None:
            record(ctx, "lr", lr)
