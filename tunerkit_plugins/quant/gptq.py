"""gptq: LoRA on a pre-quantized GPTQ checkpoint (int4 or int8), through GPT-QModel.

ms-swift's "GPTQ-int4/int8" rows: Qwen's published GPTQ checkpoints with LoRA r8 on top.
transformers loads a GPTQ checkpoint through GPT-QModel (its ``optimum`` quantizer), which
replaces every quantized ``nn.Linear`` by one of its ``BaseQuantLinear`` kernels; PEFT's
own GPTQ dispatch then puts the LoRA layers beside them. ``backend = "auto_trainable"``
lets GPT-QModel choose a kernel with a backward pass (its torch or triton kernels, which
need no compiled extension). A preset is written once as a GPTQ checkpoint of random packed
integers (``random_quantized``), so a row's memory is that of a real checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunerkit import hookimpl, option
from tunerkit_plugins.quant.prequantized import PreQuantized
from tunerkit_plugins.quant.random_quantized import Format, Hole, random_int32, repeated_nibbles, scales


@dataclass
class GptqOptions:
    bits: int = option(4, "bits per weight of the checkpoint: 4 or 8")
    group_size: int = option(128, "input columns sharing one scale and zero point (presets)")
    backend: str = option("auto_trainable", "GPT-QModel kernel: auto_trainable, gptq_torch, gptq_triton, ...")

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be positive, got {self.group_size}")


def gptq_format(o: GptqOptions) -> Format:
    per_word = 32 // o.bits

    def stored(in_f: int, out_f: int, qweight, draw_scales):
        groups = -(-in_f // o.group_size)
        return {"qweight": qweight,
                # GPTQ's v1 layout stores each zero point minus one: the midpoint 2**(bits-1).
                "qzeros": torch.full((groups, out_f // per_word), repeated_nibbles(2 ** (o.bits - 1) - 1, o.bits),
                                     dtype=torch.int32),
                "scales": draw_scales(groups, out_f),
                "g_idx": (torch.arange(in_f, dtype=torch.int32) // o.group_size)}

    def tensors(in_f: int, out_f: int):
        return stored(in_f, out_f, random_int32(in_f // per_word, out_f), lambda g, n: scales(g, n, o.bits))

    def zero_codes(in_f: int, out_f: int):
        # Every code 0 stands for (0 - zero point) x scale = -2**(bits-1) x scale: scales drawn
        # around zero with std 0.02 / 2**(bits-1) give weights of std 0.02, random per group and
        # output, as the dense presets' are. Speed and memory are the dense checkpoint's.
        return stored(in_f, out_f, Hole((in_f // per_word, out_f), torch.int32),
                      lambda g, n: (torch.randn(g, n) * (0.02 / 2 ** (o.bits - 1))).to(torch.float16))

    config = {"quant_method": "gptq", "bits": o.bits, "group_size": o.group_size, "desc_act": False,
              "sym": True, "checkpoint_format": "gptq"}
    return Format(f"gptq{o.bits}g{o.group_size}", config, tensors, zero_codes)


class Gptq(PreQuantized):
    name = "gptq"
    summary = "LoRA on a pre-quantized GPTQ checkpoint (int4/int8) through GPT-QModel's kernels"
    Options = GptqOptions
    speed_factor = 0.91  # measured over predicted, one H100: int4 and int8 on the qwen-7b, 14b and 72b presets
    modules = ("gptqmodel", "optimum")
    install_hint = "pip install 'tunerkit[gptq]'"

    def layer_classes(self):
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear

        return (BaseQuantLinear,)

    def format(self):
        return gptq_format(self.options)

    def quantization_config(self, ctx):
        from transformers import GPTQConfig

        o = self.options
        return GPTQConfig(bits=o.bits, group_size=o.group_size, desc_act=False, sym=True, backend=o.backend)

    @hookimpl
    def weight_bits(self, row):
        # each group of inputs carries a 16-bit scale and a bits-wide zero point per output
        o = self.options
        return o.bits + (16 + o.bits) / o.group_size
