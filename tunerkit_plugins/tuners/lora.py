"""lora: low-rank adapters on chosen linear layers, through PEFT's LoraConfig.

Defaults are ms-swift's benchmark settings: rank 8, alpha 32, dropout 0.05; targets
``DEFAULT`` (the model family's attention projections, as ms-swift defined them),
``ALL`` (every linear layer except the output head) or an explicit list of module names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunerkit import Plugin, hookimpl, option

#: ms-swift's DEFAULT targets per model family (transformers model_type).
DEFAULT_TARGETS = {
    "qwen": ["c_attn"],
    "chatglm": ["query_key_value"],
    "baichuan": ["W_pack"],
    "gpt2": ["c_attn"],
}
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj"]


@dataclass
class LoRAOptions:
    rank: int = option(8, "rank r of the update B @ A", min=1)
    alpha: float = option(32.0, "scaling numerator: the update is scaled by alpha / r", gt=0)
    dropout: float = option(0.05, "dropout on the adapter's input", min=0, lt=1)
    targets: str | list[str] = option("DEFAULT", "DEFAULT (the family's q,k,v), ALL (every linear but the head), or module names")


def resolve_targets(targets, model, preset=None):
    """PEFT target_modules for ms-swift's DEFAULT / ALL keywords."""
    if isinstance(targets, list):
        return targets
    if targets == "ALL":
        return "all-linear"
    if targets == "DEFAULT":
        if preset is not None:
            return list(preset.default_targets)
        return DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), LLAMA_LIKE)
    return [targets]


def unmatched_targets(plugin: str, targets, row) -> str | None:
    """Why ``targets`` cannot work on the row's model (names no module has), judged on its
    meta-device skeleton before anything loads; None when they match or the model is unknown offline."""
    from tunerkit.models.loading import resolve_model
    from tunerkit.options import did_you_mean
    from tunerkit.validation import model_skeleton, unmatched_module_names

    model = model_skeleton(row) if targets != "ALL" else None
    if model is None:
        return None
    names = resolve_targets(targets, model, resolve_model(row.settings.model).preset)
    missing = unmatched_module_names(model, names)
    if not missing:
        return None
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    near = did_you_mean(missing[0], leaves)
    return (f"{plugin} targets {missing} match no module of {row.settings.model}"
            f" ({near or 'its linear layers: ' + ', '.join(leaves)})")


class LoRA(Plugin):
    name = "lora"
    summary = "LoRA adapters (PEFT); ms-swift's r=8, alpha=32, dropout=0.05"
    Options = LoRAOptions
    slot = "tuner"

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
    def validate(self, row):
        return unmatched_targets(self.name, self.options.targets, row)

    @hookimpl
    def apply_tuner(self, ctx):
        from peft import get_peft_model

        ctx.model = get_peft_model(ctx.model, self.peft_config(ctx))

    @hookimpl
    def collect_metrics(self, ctx):
        return {"lora_targets": str(self.peft_config_kwargs(ctx)["target_modules"])}
