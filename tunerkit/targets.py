"""Which modules a PEFT adapter wraps: ms-swift's ``DEFAULT`` / ``ALL`` keywords for any model.

Shared by every PEFT-based plugin, built-in or third-party::

    from tunerkit.targets import resolve_targets
    target_modules = resolve_targets(options.targets, ctx.model, preset)
"""

from __future__ import annotations

from tunerkit.options import did_you_mean

#: ms-swift's DEFAULT targets per model family (transformers model_type).
DEFAULT_TARGETS = {
    "qwen": ["c_attn"],
    "chatglm": ["query_key_value"],
    "baichuan": ["W_pack"],
    "gpt2": ["c_attn"],
}
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj"]


def quantized_linear_names(model) -> list[str]:
    """Names of the linear layers a quantization library put in place of ``nn.Linear`` (GPTQ,
    AWQ, AQLM layers), which PEFT's "all-linear" does not recognise; empty for plain models."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = [(n, m) for n, m in model.named_modules()
              if m is not head and hasattr(m, "in_features") and hasattr(m, "out_features")]
    if all(isinstance(m, torch.nn.Linear) for _, m in layers):
        return []
    return sorted({n.rsplit(".", 1)[-1] for n, _ in layers})


def resolve_targets(targets, model, preset=None):
    """PEFT ``target_modules`` for ``targets``: ``"DEFAULT"`` (the family's attention
    projections; a preset's own list, found from the model's config when not given), ``"ALL"`` (every linear layer but the head), one
    module name, or a list of them."""
    if isinstance(targets, list):
        return targets
    if targets == "ALL":
        return quantized_linear_names(model) or "all-linear"
    if targets == "DEFAULT":
        if preset is None:  # a preset's model carries its name in its config
            from tunerkit.models.presets import get_preset

            preset = get_preset(getattr(getattr(model, "config", None), "tunerkit_preset", "") or "")
        if preset is not None:
            return list(preset.default_targets)
        return DEFAULT_TARGETS.get(getattr(model.config, "model_type", ""), LLAMA_LIKE)
    return [targets]


def unmatched_targets(target_modules, model) -> str | None:
    """A one-line reason when a name of ``target_modules`` matches no module of ``model``
    (PEFT matches a name against the end of each module's dotted name), else ``None``."""
    if isinstance(target_modules, str):
        return None  # "all-linear" or a regular expression: PEFT's own matching
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in target_modules if t not in leaves
               and not any(name.endswith("." + t) for name, _ in model.named_modules())]
    if not missing:
        return None
    hint = did_you_mean(missing[0], leaves)
    return (f"target modules {missing} match no module of {getattr(model.config, 'model_type', 'the model')}"
            + (f"; {hint}" if hint else ""))
