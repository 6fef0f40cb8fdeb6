"""Gradient checkpointing of a transformers model, for all of its decoder layers or some.

Checkpointing every layer keeps only each layer's input and reruns the layer in the
backward: for LoRA, whose backward computes no weight gradients for the frozen matmuls,
that rerun is about a third of a step's matmul work. ``uncheckpointed_layers`` leaves that
many layers out (Megatron-LM's ``recompute_num_layers`` and torchtitan's per-layer
checkpointing make the same trade): those layers keep their activations and are not
rerun, at their activations' memory each. It is the knob between full checkpointing
(least memory) and none (least compute), one layer's memory at a time.

The layers left out are spread evenly over the depth instead of taken from one end: peak
memory is the same either way (every saved activation is alive when the backward starts),
but with ``offload`` the host copies of the checkpointed layers' inputs can then overlap the
compute of the layers between them.
"""

from __future__ import annotations

from torch import nn

from tunerkit.errors import RowFailed


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """Modules transformers checkpoints (they carry ``gradient_checkpointing = True`` and the
    ``_gradient_checkpointing_func`` their forward goes through), in the model's order:
    where checkpoint-level switches (offload, selective checkpointing) wrap that call.

    The decoder model itself carries the same two attributes (a flag, not a call it makes),
    so only the innermost ones count: a module holding another one is not a layer."""
    found = [m for m in model.modules()
             if getattr(m, "gradient_checkpointing", False) and callable(getattr(m, "_gradient_checkpointing_func", None))]
    ids = {id(m) for m in found}
    return [m for m in found if not any(id(sub) in ids for sub in m.modules() if sub is not m)]


def enable_gradient_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        # Frozen embeddings would otherwise cut the graph before the first checkpointed layer.
        model.enable_input_require_grads()


def spread(count: int, total: int) -> list[int]:
    """``count`` of ``total`` indices, evenly spaced (the middle of each of ``count`` equal spans)."""
    return [int((j + 0.5) * total / count) for j in range(count)]


def leave_layers_unchecked(model: nn.Module, count: int) -> list[int]:
    """Switch checkpointing off for ``count`` evenly spread checkpointed layers; their indices.

    Runs after :func:`enable_gradient_checkpointing` and before ``on_train_begin``, so every
    plugin that looks for checkpointed layers (offload, selective checkpointing, compile)
    finds only the ones still checkpointed."""
    layers = checkpointed_layers(model)
    if count > len(layers):
        raise RowFailed(f"uncheckpointed_layers = {count}, but the model has {len(layers)} checkpointed layers "
                        "(hint: at most that many; gradient_checkpointing = false checkpoints none)")
    chosen = spread(count, len(layers))
    for i in chosen:
        layers[i].gradient_checkpointing = False
    return chosen
