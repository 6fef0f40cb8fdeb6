"""Finding the decoder blocks of a transformers causal LM, whatever its family calls them."""

from __future__ import annotations

import functools

from torch import nn

from tunerkit.errors import RowFailed


def decoder_stack(model: nn.Module) -> tuple[nn.Module, str]:
    """(owner, attribute) of the ModuleList holding the decoder blocks: ``owner.<attribute>[i]``.

    transformers models expose their decoder through ``get_decoder()`` with a ``layers`` list
    (Llama, Qwen2, Mistral, ...); older remote-code models keep it elsewhere, so fall back to
    the longest ModuleList in the model.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder, "layers"
    best: tuple[nn.Module, str] | None = None
    best_len = 0
    for owner in model.modules():
        for attr, child in owner.named_children():
            if isinstance(child, nn.ModuleList) and len(child) > best_len:
                best, best_len = (owner, attr), len(child)
    if best is None:
        raise RowFailed(f"found no decoder layers in {type(model).__name__}")
    return best


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks themselves, in order (``owner.<attribute>`` of :func:`decoder_stack`)."""
    owner, attr = decoder_stack(model)
    return list(getattr(owner, attr))


def text_config(model: nn.Module):
    """The config that holds num_hidden_layers (the text part of a multimodal config)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


_WRAPS = "_tunerkit_checkpoint_wraps"


def _compose(layer: nn.Module) -> None:
    chain = vars(layer)[_WRAPS]
    function = chain["base"]
    for _token, wrap in chain["wraps"]:
        function = wrap(function)
    layer._gradient_checkpointing_func = function


def wrap_checkpoint_calls(layers: list[nn.Module], wrap, ctx=None) -> list[tuple[nn.Module, object]]:
    """Wrap each layer's checkpoint call: it becomes ``wrap(previous)``; returns what
    :func:`restore_checkpoint_calls` needs to take this wrap off again. Given the row's
    context, the wrap comes off after the row (``ctx.on_teardown``).

    Several plugins wrap the same call (offload, selective_checkpointing, compile) and tear
    down in the order they set up, not in reverse; so each layer keeps its original call
    and the list of wraps, and taking one off rebuilds the chain from the others."""
    patched = []
    for layer in layers:
        chain = vars(layer).setdefault(_WRAPS, {"base": layer._gradient_checkpointing_func, "wraps": []})
        token = object()
        chain["wraps"].append((token, wrap))
        _compose(layer)
        patched.append((layer, token))
    if ctx is not None:
        ctx.on_teardown(functools.partial(restore_checkpoint_calls, patched), "checkpoint wraps")
    return patched


def restore_checkpoint_calls(patched: list[tuple[nn.Module, object]]) -> None:
    for layer, token in reversed(patched):
        chain = vars(layer).get(_WRAPS)
        if chain is None:
            continue
        chain["wraps"] = [(t, w) for t, w in chain["wraps"] if t is not token]
        if chain["wraps"]:
            _compose(layer)
        else:
            layer._gradient_checkpointing_func = chain["base"]
            del vars(layer)[_WRAPS]
    patched.clear()
