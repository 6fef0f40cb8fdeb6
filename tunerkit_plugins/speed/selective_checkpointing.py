"""selective_checkpointing: keep the matmul and attention outputs, recompute only the cheap ops.

Plain gradient checkpointing keeps each decoder layer's input and reruns the whole layer
in the backward: about a third more compute for LoRA, all of it matmuls and attention.
PyTorch's selective activation checkpointing (``torch.utils.checkpoint`` with
``context_fn=create_selective_checkpoint_contexts(policy)``, what torchtitan and torchtune
call "selective AC") lets a policy choose per op: outputs of the chosen ops are kept from
the forward, everything else (norms, activations, residual adds, dropout, LoRA's scaling)
is recomputed. Saving the matmuls and attention removes the expensive part of the
recompute at the memory cost of those outputs: about ``tokens x (q + k + v + o + 2 ffn +
hidden) x 2 bytes`` per layer in bf16, roughly 1.2 GiB per 16k tokens per layer of a
7b-shaped model, so it suits shorter steps; ``every_other_matmul`` halves that.

The plugin wraps each checkpointed layer's ``_gradient_checkpointing_func`` (transformers'
``GradientCheckpointingLayer``), adding the ``context_fn``; transformers' non-reentrant
checkpoint is kept (selective checkpointing needs it). With ``offload`` the layer inputs
still go to host memory; the outputs kept here stay on the GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from tunerkit import Plugin, hookimpl, option
from tunerkit.checkpointing import checkpointed_layers
from tunerkit.errors import RowFailed

from tunerkit_plugins._helpers.layers import wrap_checkpoint_calls

#: Dispatcher names of the ops a "matmul" policy keeps (what nn.Linear and LoRA lower to).
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"})


def is_attention(name: str) -> bool:
    """SDPA's fused kernels (flash, memory-efficient, cuDNN, CPU flash) and torch's varlen kernel."""
    return ("attention" in name or "varlen_attn" in name) and "backward" not in name


@dataclass
class SelectiveCheckpointingOptions:
    save: Literal["matmuls_and_attention", "matmuls", "attention"] = option(
        "matmuls_and_attention", "outputs kept from the forward instead of recomputed in the backward")
    every_other_matmul: bool = option(
        False, "keep only every second matmul output of a layer (half the memory, half the saved recompute)")


def make_policy(save: str, every_other_matmul: bool):
    """A fresh policy per checkpoint call: the matmul counter must match between the forward
    and its recompute, which is why each call counts on its own (one counter per mode)."""
    from torch.utils.checkpoint import CheckpointPolicy

    keep_mm = save in ("matmuls_and_attention", "matmuls")
    keep_attn = save in ("matmuls_and_attention", "attention")
    counts = {False: 0, True: 0}

    def policy(ctx, func, *args, **kwargs):
        name = func.name() if hasattr(func, "name") else str(func)
        if keep_attn and is_attention(name):
            return CheckpointPolicy.MUST_SAVE
        if keep_mm and name in MATMUL_OPS:
            counts[ctx.is_recompute] += 1
            if not every_other_matmul or counts[ctx.is_recompute] % 2 == 1:
                return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def selective_context(save: str, every_other_matmul: bool):
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(make_policy(save, every_other_matmul))


class SelectiveCheckpointing(Plugin):
    name = "selective_checkpointing"
    conformance = {"companions": ["lora"], "settings": {"gradient_checkpointing": True}}
    summary = "gradient checkpointing that keeps matmul/attention outputs and recomputes only the cheap ops"
    Options = SelectiveCheckpointingOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.patched: list[tuple[object, object]] = []

    @hookimpl
    def validate(self, row):
        if not row.settings.gradient_checkpointing:
            return "selective_checkpointing refines gradient checkpointing: set gradient_checkpointing = true"
        return None

    @hookimpl
    def on_train_begin(self, ctx):
        layers = checkpointed_layers(ctx.unwrapped_model())
        if not layers:
            raise RowFailed("selective_checkpointing found no checkpointed layer (the model does not support "
                            "transformers' gradient checkpointing)")
        o = self.options
        context_fn = functools.partial(selective_context, o.save, o.every_other_matmul)
        self.patched = wrap_checkpoint_calls(layers, lambda original: functools.partial(original, context_fn=context_fn),
                                             ctx)
        ctx.log(f"selective checkpointing on {len(layers)} layers: keeps {o.save}"
                + (" (every other matmul)" if o.every_other_matmul else ""))

    @hookimpl
    def collect_metrics(self, ctx):
        return {"selective_checkpointing_layers": len(self.patched),
                "selective_checkpointing_save": self.options.save}
