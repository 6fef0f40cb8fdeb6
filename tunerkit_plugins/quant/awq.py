"""awq: LoRA on a pre-quantized AWQ 4-bit checkpoint, through GPT-QModel's AWQ kernels.

ms-swift's AWQ row: qwen1.5-7b-chat-awq with LoRA r8 on all linear layers. transformers
loads AWQ checkpoints (GEMM layout) through GPT-QModel, which replaces each quantized
``nn.Linear`` by one of its AWQ layers; PEFT's AWQ dispatch puts LoRA beside them.
``backend = "auto_trainable"`` picks a kernel with a backward pass. A preset is written
once as an AWQ GEMM checkpoint of random packed integers (``random_quantized``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunerkit import hookimpl, option
from tunerkit_plugins.quant.prequantized import PreQuantized
from tunerkit_plugins.quant.random_quantized import Format, random_int32, repeated_nibbles, scales


@dataclass
class AwqOptions:
    bits: int = option(4, "bits per weight of the checkpoint (AWQ's GEMM layout: 4)")
    group_size: int = option(128, "input rows sharing one scale and zero point (presets)")
    backend: str = option("auto_trainable", "GPT-QModel AWQ kernel: auto_trainable, torch_awq, gemm_triton, ...")

    def __post_init__(self):
        if self.bits != 4:
            raise ValueError(f"bits must be 4 (AWQ's GEMM layout), got {self.bits}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be positive, got {self.group_size}")


def awq_format(o: AwqOptions) -> Format:
    per_word = 32 // o.bits

    def tensors(in_f: int, out_f: int):
        groups = -(-in_f // o.group_size)
        return {"qweight": random_int32(in_f, out_f // per_word),
                "qzeros": torch.full((groups, out_f // per_word), repeated_nibbles(2 ** (o.bits - 1), o.bits),
                                     dtype=torch.int32),
                "scales": scales(groups, out_f, o.bits)}

    config = {"quant_method": "awq", "bits": o.bits, "group_size": o.group_size, "zero_point": True,
              "version": "gemm"}
    return Format(f"awq{o.bits}g{o.group_size}", config, tensors)


class Awq(PreQuantized):
    name = "awq"
    summary = "LoRA on a pre-quantized AWQ 4-bit checkpoint through GPT-QModel's AWQ kernels"
    Options = AwqOptions
    speed_factor = 0.85  # measured over predicted, one H100: the qwen1.5-7b row
    modules = ("gptqmodel",)
    install_hint = "pip install 'tunerkit[gptq]'"

    def layer_classes(self):
        from gptqmodel.nn_modules.qlinear import BaseQuantLinear

        return (BaseQuantLinear,)

    def format(self):
        return awq_format(self.options)

    def quantization_config(self, ctx):
        from transformers import AwqConfig

        o = self.options
        return AwqConfig(bits=o.bits, group_size=o.group_size, zero_point=True, version="gemm", backend=o.backend)

    @hookimpl
    def weight_bits(self, row):
        o = self.options
        return o.bits + (16 + o.bits) / o.group_size
