"""ia3: learned scaling vectors on keys, values and the MLP's input (PEFT's IA3Config).

IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning") trains one vector per adapted layer that rescales its activations
element-wise, starting at ones. The plugin reports how far training moved those scales
from one (``ia3_scale_drift``), declared so ``tunerkit report`` and ``plot`` show it.
"""

from __future__ import annotations

from dataclasses import dataclass

import tunerkit
from tunerkit.targets import resolve_targets, unmatched_targets

#: PEFT's own IA3 defaults for Llama-style models
TARGETS = ["k_proj", "v_proj", "down_proj"]
FEEDFORWARD = ["down_proj"]


@dataclass
class IA3Options:
    targets: str | list[str] = tunerkit.option(TARGETS, "modules whose activations are rescaled: names, DEFAULT or ALL")
    feedforward: list[str] = tunerkit.option(FEEDFORWARD, "targets rescaled on their input (the MLP's down projection)")

    def __post_init__(self):
        if isinstance(self.targets, list):
            extra = sorted(set(self.feedforward) - set(self.targets))
            if extra:
                raise ValueError(f"feedforward modules {extra} must also be in targets")


class IA3(tunerkit.Plugin):
    name = "ia3"
    summary = "IA3 (PEFT): one learned scaling vector per adapted layer"
    Options = IA3Options
    slot = "tuner"
    metrics = (tunerkit.MetricSpec("ia3_scale_drift", "IA3 scale drift", unit="mean abs(l - 1)", format=".2e"),)

    @tunerkit.hookimpl
    def validate_model(self, row, model):
        reason = unmatched_targets(resolve_targets(self.options.targets, model), model)
        return f"ia3: {reason}" if reason else None

    @tunerkit.hookimpl
    def apply_tuner(self, ctx):
        from peft import IA3Config, get_peft_model

        config = IA3Config(target_modules=resolve_targets(self.options.targets, ctx.model),
                           feedforward_modules=self.options.feedforward, task_type="CAUSAL_LM")
        ctx.model = get_peft_model(ctx.model, config)

    @tunerkit.hookimpl
    def collect_metrics(self, ctx):
        import torch

        vectors = [p.detach().float() for n, p in ctx.unwrapped_model().named_parameters() if "ia3_l" in n]
        drift = torch.cat([(v - 1).abs().flatten() for v in vectors]).mean().item() if vectors else None
        return {"ia3_scale_drift": drift}
