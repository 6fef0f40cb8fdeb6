"""dora: weight-decomposed LoRA — a trained magnitude per output row times a LoRA-updated direction.

PEFT's ``use_dora`` initialises the magnitude vector from the norms of the *loaded* base
weight (``apply_tuner`` runs after ``load_model``), so the model's output is unchanged at
init. DoRA costs an extra weight-norm per adapted layer and step: expect it slower than
LoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353).
"""

from __future__ import annotations

from tunerkit import hookimpl
from tunerkit_plugins._helpers import estimates
from tunerkit_plugins.tuners.lora import LoRA


class DoRA(LoRA):
    name = "dora"
    summary = "weight-decomposed LoRA (PEFT use_dora): magnitude vector + LoRA direction"
    extra_per_target = 1  # the magnitude vector

    def peft_config_kwargs(self, ctx) -> dict:
        return {**super().peft_config_kwargs(ctx), "use_dora": True}

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        super().estimate_memory(row, shape, estimate)
        # PEFT's DoRA recomputes each adapted weight's norm (the whole W + BA) every forward:
        # its operations are counted beside LoRA's (estimates.DORA_EXTRA_OPS)
        estimates.dora_magnitudes(estimate, shape, self.adapted_names(row, shape), self.options.dropout,
                                  autocast=bool(row.settings.autocast))
