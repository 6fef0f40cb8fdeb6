"""Evaluators by name: what a row's ``evaluate = [...]`` may list.

Each evaluator takes the RunContext after training and returns a dict of metrics.
"""

from __future__ import annotations

from typing import Callable


def evaluators() -> dict[str, Callable]:
    from tunerkit.eval import extra  # infer speed and public benchmarks
    from tunerkit.eval.graded import builtin_accuracy
    from tunerkit.eval.loss import eval_loss

    return {"eval_loss": eval_loss, "accuracy": builtin_accuracy, **extra.EVALUATORS}
