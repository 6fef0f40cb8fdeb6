"""Evaluators beyond eval loss and the builtin task: decoding speed and public benchmarks."""

from __future__ import annotations

from tunerkit.eval import arc, ceval, gsm8k
from tunerkit.eval.infer import infer_speed

EVALUATORS = {
    "infer_speed": infer_speed,
    "gsm8k": gsm8k.evaluator,
    "arc": arc.evaluator,
    "ceval": ceval.evaluator,
}
