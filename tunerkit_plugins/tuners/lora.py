"""lora: low-rank adapters on chosen linear layers, through PEFT's LoraConfig.

Defaults are the seed's benchmark settings: rank 8, alpha 32, dropout 0.05; targets
``DEFAULT`` (the model family's attention projections, as the seed defined them),
``ALL`` (every linear layer except the output head) or an explicit list of module names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunerkit import Plugin, hookimpl, option

#: The seed's DEFAULT targets per model family (transformers model_type).
DEFAULT_TARGETS = {
    "qwen": ["c_attn"],
    "chatglm": ["query_key_value"],
    "baichuan": ["W_pack"],
    "gpt2": ["c_attn"],
}
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj"]


@dataclass
class LoRAOptions:
    rank: int = option(8, "rank r of the update B @ A")
    alpha: float = option(32.0, "scaling numerator: the update is scaled by alpha / r")
    dropout: float = option(0.05, "dropout on the adapter's input")
    targets: str | list[str] = option("DEFAULT", "DEFAULT (the family's q,k,v), ALL (every linear but the head), or module names")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def quantized_linear_names(model) -> list[str]:
    """Names of the linear layers a quantization library put in place of ``nn.Linear`` (GPTQ,
    AWQ, AQLM layers), which PEFT's "all-linear" does not recognise; empty for plain models."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = [(n, m) for n, m in model.named_modules()
              if m is not head and hasattr(m, "in_features") and hasattr(m, "out_features")]
    if all(isinstance(m, torch.nn.Linear) for _, m in layers):
        return []
    return sorted({n.rsplit(".", 1)[-1] for n, _ in layers})


def resolve_targets(targets, model, preset=None):
    """PEFT target_modules for the seed's DEFAULT / ALL keywords."""
    if isinstance(targets, list):
        return targets
    if targets == "ALL":
        return quantized_linear_names(model) or "all-linear"
    if targets == "DEFAULT":
        if preset is not None:
            return list(preset.default_targets)
        return DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), LLAMA_LIKE)
    return [targets]


class LoRA(Plugin):
    name = "lora"
    summary = "LoRA adapters (PEFT); the seed's r=8, alpha=32, dropout=0.05"
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
    def apply_tuner(self, ctx):
        from peft import get_peft_model

        ctx.model = get_peft_model(ctx.model, self.peft_config(ctx))

    @hookimpl
    def collect_metrics(self, ctx):
        return {"lora_targets": str(self.peft_config_kwargs(ctx)["target_modules"])}
