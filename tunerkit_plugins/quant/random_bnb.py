"""A preset quantized by bitsandbytes layer by layer in memory, with no full-precision checkpoint.

The bnb rows of other presets load a random bf16 checkpoint through transformers' quantizer,
as a user's QLoRA run loads a real one. The 72b shape's bf16 checkpoint (145 GB) fits
neither a 64 GiB disk nor one GPU, while its 4-bit weights (about 40 GB) fit one H200. Here
each linear's random bf16 weight is drawn on the row's device and handed to bitsandbytes'
own ``Params4bit``/``Int8Params``, which quantize it on the move; only one full-precision
matrix exists at a time. The result has the layer types, storage and scales transformers'
quantizer gives (tests/plugins/test_bnb.py compares the two), and its weights are random:
speed and memory only.
"""

from __future__ import annotations

import torch

from tunerkit.models.presets import Preset
from tunerkit_plugins.quant.random_quantized import _plain_tensor, _quantized_names

STD = 0.02  # the presets' initializer_range


def _replace_linears(model, options, compute_dtype: torch.dtype) -> None:
    """Every nn.Linear but the output head becomes a bitsandbytes layer on the meta device."""
    import bitsandbytes as bnb

    for name, linear in _quantized_names(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bias = linear.bias is not None
        if options.bits == 8:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias,
                                        has_fp16_weights=False, threshold=6.0, device="meta")
        else:
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
                                      compress_statistics=options.double_quant, quant_type=options.quant_type,
                                      device="meta")
        setattr(parent, child, layer)


def _quantize_in_place(layer, options, dtype: torch.dtype, device: torch.device) -> None:
    import bitsandbytes as bnb

    if options.bits == 8:
        # Int8Params quantizes only on a move from the CPU, so its draw starts there.
        weight = torch.randn(layer.out_features, layer.in_features, dtype=dtype).mul_(STD)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)
    else:
        weight = torch.randn(layer.out_features, layer.in_features, dtype=dtype, device=device).mul_(STD)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, blocksize=64,
                                         compress_statistics=options.double_quant, quant_type=options.quant_type,
                                         module=layer).to(device)
    if layer.weight.dtype not in (torch.int8, torch.uint8):
        # A full-precision weight here would measure the wrong model without a word.
        raise RuntimeError(f"bitsandbytes left a {layer.weight.dtype} weight unquantized")
    if layer.bias is not None:
        layer.bias = torch.nn.Parameter(torch.zeros(layer.out_features, dtype=dtype, device=device),
                                        requires_grad=False)


def _materialize_plain(model, dtype: torch.dtype, device: torch.device) -> None:
    """Embeddings, norms and the head (still on meta): drawn like the preset's initialisation."""
    for name, module in model.named_modules():
        for pname, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                full = f"{name}.{pname}" if name else pname
                setattr(module, pname, torch.nn.Parameter(_plain_tensor(full, param.shape, dtype, device),
                                                          requires_grad=False))


def random_bnb_model(preset: Preset, options, dtype: torch.dtype, device: torch.device, attn: str):
    """The preset with its linears quantized by bitsandbytes, drawn and quantized one at a time."""
    import bitsandbytes as bnb
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = preset.config()
    config._attn_implementation = attn
    # Parameters on meta, buffers (rotary frequencies) computed for real.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    _replace_linears(model, options, dtype)
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            _quantize_in_place(module, options, dtype, device)
    _materialize_plain(model, dtype, device)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.to(device)  # the buffers
    # What transformers' quantizer marks, so PEFT treats the model as quantized (k-bit preparation, layer dispatch).
    setattr(model, "is_loaded_in_8bit" if options.bits == 8 else "is_loaded_in_4bit", True)
    model.config.quantization_config = {"quant_method": "bitsandbytes", f"load_in_{options.bits}bit": True,
                                        "bnb_4bit_quant_type": options.quant_type,
                                        "bnb_4bit_use_double_quant": options.double_quant,
                                        "random_weights_in_memory": True}
    model.eval()
    return model
