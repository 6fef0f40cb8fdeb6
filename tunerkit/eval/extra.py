"""Evaluators beyond eval loss and the builtin task: decoding speed and public benchmarks."""

from __future__ import annotations

from pathlib import Path

from tunerkit.eval import arc, ceval, gsm8k
from tunerkit.eval.infer import infer_speed

EVALUATORS = {
    "infer_speed": infer_speed,
    "gsm8k": gsm8k.evaluator,
    "arc": arc.evaluator,
    "ceval": ceval.evaluator,
}

#: evaluators that read files under eval_data_dir/<name>
FILE_TASKS = ("gsm8k", "arc", "ceval")


def check_settings(settings) -> str | None:
    """A one-line reason why the row's file-based evaluators cannot run, else None (for recipe validation)."""
    wanted = [name for name in settings.evaluate if name in FILE_TASKS]
    if not wanted:
        return None
    if settings.eval_data_dir is None:
        return f"evaluate lists {', '.join(wanted)} but eval_data_dir is not set (see docs/evaluation.md)"
    root = Path(settings.eval_data_dir).expanduser()
    missing = [name for name in wanted if not (root / name).is_dir()]
    if missing:
        return f"eval_data_dir {root} has no {', '.join(m + '/' for m in missing)} folder (see docs/evaluation.md)"
    return None
