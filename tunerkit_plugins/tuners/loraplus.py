"""loraplus: LoRA whose B matrices learn faster than its A matrices (LoRA+).

Parameter groups, the way PEFT's ``create_loraplus_optimizer`` builds them (its grouping is
reused here, so both stay in step): ``lora_B`` matrices and every other 1-D trainable
parameter at ``lr * lr_ratio``, ``lora_A`` at ``lr``, LoRA embedding matrices at
``lr_embedding``. Any optimizer plugin then receives these groups (Hayou et al. 2024,
https://arxiv.org/abs/2402.12354).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunerkit import hookimpl, option
from tunerkit.optimizer import decays
from tunerkit_plugins.tuners.lora import LoRA, LoRAOptions


@dataclass
class LoRAPlusOptions(LoRAOptions):
    lr_ratio: float = option(16.0, "learning rate of lora_B (and 1-D params) = learning_rate * lr_ratio", gt=0)
    lr_embedding: float = option(1e-6, "learning rate of LoRA matrices on embedding layers", min=0)


class _GroupsOnly:
    """Stands in for an optimizer class: PEFT builds the groups and hands them to it."""

    def __init__(self, groups, **defaults):
        self.groups = groups


class LoRAPlus(LoRA):
    name = "loraplus"
    summary = "LoRA+ (PEFT grouping): lora_B at lr * lr_ratio, lora_A at lr, embeddings at lr_embedding"
    Options = LoRAPlusOptions

    @hookimpl
    def param_groups(self, ctx):
        from peft.optimizers import create_loraplus_optimizer

        o, s = self.options, ctx.settings
        built = create_loraplus_optimizer(ctx.model, _GroupsOnly, lr=s.learning_rate, loraplus_lr_ratio=o.lr_ratio,
                                          loraplus_lr_embedding=o.lr_embedding, loraplus_weight_decay=s.weight_decay)
        # PEFT decides the learning rates. Weight decay follows the rule of every other row (none on
        # biases and norms): PEFT only exempts nn.LayerNorm, so it would decay RMSNorm weights.
        names = {id(p): n for n, p in ctx.model.named_parameters()}
        groups = []
        for group in built.groups:
            exempt = [p for p in group["params"] if not decays(names[id(p)], p)]
            decayed = [p for p in group["params"] if decays(names[id(p)], p)]
            groups += [{**group, "params": decayed}, {**group, "params": exempt, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    @hookimpl
    def collect_metrics(self, ctx):
        return {**super().collect_metrics(ctx), "loraplus_lr_ratio": self.options.lr_ratio}
