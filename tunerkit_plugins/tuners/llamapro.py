"""llamapro: block expansion — insert identity-initialised copies of decoder blocks and train only them.

After every ``layers // num_new_blocks`` original blocks (``num_new_blocks`` times), a
deep copy of the block just before is inserted with its attention output projection
(``o_proj``) and MLP down projection (``down_proj``) zeroed: both residual branches then
add nothing, so the expanded model computes exactly what the original did. Every block's
``layer_idx`` is renumbered (the KV cache is indexed by it) and the config gets the new
layer count, so generation works and ``save_pretrained`` writes a checkpoint plain
transformers loads (Wu et al. 2024, https://arxiv.org/abs/2401.02415).

Expansion happens in ``modify_model``; ``apply_tuner`` freezes all but the new blocks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed
from tunerkit_plugins._helpers.layers import decoder_stack, text_config
from tunerkit_plugins._helpers import estimates

#: Output projections of the two residual branches; zeroed, they make a block an identity.
ZEROED = ("o_proj", "down_proj")


@dataclass
class LlamaProOptions:
    num_new_blocks: int = option(4, "blocks inserted: one after every layers // num_new_blocks original blocks", min=1)


def _layers_error(layers: int, new: int) -> str | None:
    if new > layers:
        return f"llamapro: num_new_blocks={new} exceeds the model's {layers} layers"
    return None


def identity_copy(block: nn.Module) -> nn.Module:
    """A deep copy of ``block`` whose residual branches output zero."""
    new = copy.deepcopy(block)
    zeroed = 0
    for name, module in new.named_modules():
        if name.rsplit(".", 1)[-1] in ZEROED:
            for p in module.parameters():
                p.data.zero_()
            zeroed += 1
    if zeroed < len(ZEROED):
        raise RowFailed(f"llamapro: {type(block).__name__} lacks {' and '.join(ZEROED)}; cannot make an identity copy")
    return new


def expand(model: nn.Module, num_new_blocks: int) -> list[int]:
    """Insert the new blocks in place; return their indices in the expanded stack."""
    owner, attr = decoder_stack(model)
    old = list(getattr(owner, attr))
    reason = _layers_error(len(old), num_new_blocks)
    if reason:
        raise RowFailed(reason)
    # One new block after every `group` original ones, num_new_blocks times; when the count does not
    # divide the layers (SmolLM2-135M has 30), the last `layers % num_new_blocks` blocks get none.
    group = len(old) // num_new_blocks
    config = text_config(model)
    old_types = getattr(config, "layer_types", None)
    stack, types, new_indices = [], [], []
    for i, block in enumerate(old):
        stack.append(block)
        types.append(old_types[i] if old_types else None)
        if (i + 1) % group == 0 and len(new_indices) < num_new_blocks:
            new_indices.append(len(stack))
            stack.append(identity_copy(block))
            types.append(types[-1])  # the copy attends the way the block it copies does
    for index, block in enumerate(stack):
        for module in block.modules():  # attention (and some layers) carry the KV-cache slot
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    setattr(owner, attr, nn.ModuleList(stack))
    if old_types is not None:
        config.layer_types = types
    config.num_hidden_layers = len(stack)
    return new_indices


class LlamaPro(Plugin):
    name = "llamapro"
    summary = "LLaMA Pro block expansion: identity copies of blocks inserted, only they train"
    Options = LlamaProOptions
    slot = "tuner"

    @hookimpl
    def validate(self, row):
        from tunerkit.models.presets import get_preset

        preset = get_preset(row.settings.model)
        return _layers_error(preset.layers, self.options.num_new_blocks) if preset else None

    @hookimpl
    def modify_model(self, ctx):
        ctx.state[self.name] = {"new_blocks": expand(ctx.model, self.options.num_new_blocks)}

    @hookimpl
    def apply_tuner(self, ctx):
        owner, attr = decoder_stack(ctx.model)
        layers = getattr(owner, attr)
        ctx.model.requires_grad_(False)
        for index in ctx.state[self.name]["new_blocks"]:
            layers[index].requires_grad_(True)

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        estimates.new_blocks(estimate, shape, self.options.num_new_blocks)

    @hookimpl
    def collect_metrics(self, ctx):
        return {"llamapro_new_blocks": ctx.state[self.name]["new_blocks"],
                "num_hidden_layers": text_config(ctx.unwrapped_model()).num_hidden_layers}
