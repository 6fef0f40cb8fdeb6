"""Finding the decoder blocks of a transformers causal LM, whatever its family calls them."""

from __future__ import annotations

from torch import nn

from tunerkit.errors import RowFailed


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str]:
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


def text_config(model: nn.Module):
    """The config that holds num_hidden_layers (the text part of a multimodal config)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """Modules transformers checkpoints (they carry ``gradient_checkpointing = True`` and the
    ``_gradient_checkpointing_func`` their forward goes through): where checkpoint-level
    switches (offload, selective checkpointing) wrap that call."""
    return [m for m in model.modules()
            if getattr(m, "gradient_checkpointing", False) and callable(getattr(m, "_gradient_checkpointing_func", None))]


def wrap_checkpoint_calls(layers: list[nn.Module], wrap) -> list[tuple[nn.Module, object]]:
    """Replace each layer's checkpoint call with ``wrap(original)``; returns what
    :func:`restore_checkpoint_calls` needs to put the originals back."""
    patched = []
    for layer in layers:
        original = layer._gradient_checkpointing_func
        patched.append((layer, original))
        layer._gradient_checkpointing_func = wrap(original)
    return patched


def restore_checkpoint_calls(patched: list[tuple[nn.Module, object]]) -> None:
    for layer, original in reversed(patched):
        layer._gradient_checkpointing_func = original
    patched.clear()
