"""lora: low-rank adapters on chosen linear layers, through PEFT's LoraConfig.

Defaults are ms-swift's benchmark settings: rank 8, alpha 32, dropout 0.05; targets
``DEFAULT`` (the model family's attention projections, as ms-swift defined them),
``ALL`` (every linear layer except the output head) or an explicit list of module names.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunerkit import Plugin, hookimpl, option
from tunerkit.targets import resolve_targets, unmatched_targets
from tunerkit_plugins._helpers import estimates


@dataclass
class LoRAOptions:
    rank: int = option(8, "rank r of the update B @ A", min=1)
    alpha: float = option(32.0, "scaling numerator: the update is scaled by alpha / r", gt=0)
    dropout: float = option(0.05, "dropout on the adapter's input", min=0, lt=1)
    targets: str | list[str] = option("DEFAULT", "DEFAULT (the family's q,k,v), ALL (every linear but the head), or module names")


class LoRA(Plugin):
    name = "lora"
    summary = "LoRA adapters (PEFT); ms-swift's r=8, alpha=32, dropout=0.05"
    Options = LoRAOptions
    slot = "tuner"
    #: trained parameters per adapted output feature beside A and B (DoRA's magnitude)
    extra_per_target = 0
    #: trained parameters per rank and adapted linear beside A and B (AdaLoRA's singular values)
    extra_per_rank = 0

    def peft_config_kwargs(self, ctx) -> dict:
        """Keyword arguments of LoraConfig; variants (rslora, dora, ...) extend this."""
        o = self.options
        preset = getattr(ctx.model_source, "preset", None)
        return dict(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout,
                    target_modules=resolve_targets(o.targets, ctx.model, preset), task_type="CAUSAL_LM")

    def peft_config(self, ctx):
        from peft import LoraConfig

        return LoraConfig(**self.peft_config_kwargs(ctx))

    @hookimpl
    def apply_tuner(self, ctx):
        from peft import get_peft_model

        ctx.model = get_peft_model(ctx.model, self.peft_config(ctx))

    @hookimpl
    def validate_model(self, row, model):
        targets = resolve_targets(self.options.targets, model)
        reason = unmatched_targets(targets, model)
        return f"{self.name}: {reason}" if reason else None

    @hookimpl
    def collect_metrics(self, ctx):
        return {"lora_targets": str(self.peft_config_kwargs(ctx)["target_modules"])}

    def adapted_names(self, row, shape) -> list[str]:
        """The layer linears this row adapts, by name (for the estimate)."""
        from tunerkit.models.presets import get_preset

        preset = get_preset(row.settings.model)
        return estimates.target_names(self.options.targets, shape,
                                      preset.default_targets if preset else estimates.LLAMA_LIKE)

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        names = self.adapted_names(row, shape)
        rank = getattr(self.options, "rank", None) or getattr(self.options, "init_r", 8)
        estimates.low_rank_adapters(estimate, shape, names, rank, self.options.dropout,
                                    self.extra_per_target, self.extra_per_rank)
