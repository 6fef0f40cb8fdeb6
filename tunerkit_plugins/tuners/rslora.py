"""rslora: rank-stabilised LoRA — the update is scaled by alpha/sqrt(r) instead of alpha/r.

Everything else is LoRA (same options, same defaults, same targets); PEFT's
``use_rslora`` switches the scaling (Kalajdzievski 2023, https://arxiv.org/abs/2312.03732).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunerkit import option
from tunerkit_plugins.tuners.lora import LoRA, LoRAOptions


@dataclass
class RsLoRAOptions(LoRAOptions):
    alpha: float = option(32.0, "scaling numerator: the update is scaled by alpha / sqrt(r)", gt=0)


class RsLoRA(LoRA):
    name = "rslora"
    summary = "rank-stabilised LoRA (PEFT use_rslora): scale alpha/sqrt(r)"
    Options = RsLoRAOptions

    def peft_config_kwargs(self, ctx) -> dict:
        return {**super().peft_config_kwargs(ctx), "use_rslora": True}
