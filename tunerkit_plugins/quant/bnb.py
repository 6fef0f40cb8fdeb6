"""bnb: the base model's linear layers quantized by bitsandbytes on load (QLoRA), adapters on top.

ms-swift's "int4 (bnb)" rows: 4-bit NF4 with double quantization, compute in the row's
dtype, LoRA r8 on the DEFAULT targets. Loading goes through transformers' own quantizer
(``BitsAndBytesConfig``), so every ``nn.Linear`` but the output head becomes a
``bitsandbytes`` ``Linear4bit`` (or ``Linear8bitLt`` with ``bits = 8``); PEFT then puts its
adapters on those layers. A preset's random weights are written once as a checkpoint in
the cache (``tunerkit.models.loading.preset_checkpoint``) so they reach the GPU already
quantized: the row's peak memory is what a QLoRA user sees, never the full-precision model.

``prepare = true`` runs ``peft.prepare_model_for_kbit_training`` (the QLoRA recipe: every
base weight frozen, the non-quantized ones -- norms, embeddings, head -- upcast to fp32);
the core still switches gradient checkpointing on and off as the row says.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from typing import Literal

import torch

from tunerkit import Plugin, hookimpl, option
from tunerkit.core import load_base_model, row_attention
from tunerkit.errors import RowFailed
from tunerkit.models import loading
from tunerkit_plugins.quant.prequantized import ADAPTER_TUNERS

INSTALL_HINT = "pip install bitsandbytes"


@dataclass
class BnbOptions:
    bits: int = option(4, "4 (QLoRA, Linear4bit) or 8 (LLM.int8, Linear8bitLt)")
    quant_type: Literal["nf4", "fp4"] = option("nf4", "4-bit data type: NormalFloat4 (QLoRA's) or FP4")
    double_quant: bool = option(True, "quantize the 4-bit blocks' scales too (QLoRA's double quantization)")
    prepare: bool = option(True, "peft.prepare_model_for_kbit_training: freeze, upcast norms/embeddings/head to fp32")
    preset_weights: Literal["auto", "checkpoint", "in_memory"] = option(
        "auto", "a preset's random weights: 'checkpoint' writes them in bf16 and loads through transformers' "
                "quantizer; 'in_memory' draws and quantizes them layer by layer (no disk); 'auto' writes the "
                "checkpoint when it fits the cache's disk twice over")

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")


def quantization_config(o: BnbOptions, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if o.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=o.quant_type,
                              bnb_4bit_use_double_quant=o.double_quant, bnb_4bit_compute_dtype=compute_dtype)


def quantized_linears(model) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())


class Bnb(Plugin):
    name = "bnb"
    conformance = {"companions": ["lora"]}
    summary = "bitsandbytes-quantized base weights (4-bit NF4 QLoRA, or 8-bit), adapters on top"
    Options = BnbOptions
    # Quantized weights cannot take gradients: only adapter tuners go on top of them.
    requires_any = ADAPTER_TUNERS
    conflicts = ("full", "galore", "lisa", "llamapro", "deepspeed")

    @hookimpl
    def validate(self, row):
        if importlib.util.find_spec("bitsandbytes") is None:
            return f"bnb needs the bitsandbytes package, which is not installed ({INSTALL_HINT})"
        if self.options.bits == 8 and not torch.cuda.is_available():
            return "bnb bits = 8 (LLM.int8) runs on a CUDA GPU only; use bits = 4 on this machine"
        return None

    @hookimpl
    def weight_bits(self, row):
        # 4-bit blocks of 64 carry a scale each (8 bits, double-quantized; 32 without).
        if self.options.bits == 8:
            return 8 + 32 / 4096  # LLM.int8: one fp32 scale per row of a 4096-wide matrix
        return 4 + (8 if self.options.double_quant else 32) / 64

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        # bitsandbytes dequantizes each 4-bit block in every forward and backward, which the
        # matmul count does not see: measured over predicted on one H100 (the qwen-14b and 72b rows)
        if self.options.bits == 4:
            estimate.speed_factor *= 0.93
        if not self.options.prepare:
            return
        # prepare_model_for_kbit_training upcasts everything it leaves unquantized (embeddings,
        # head, norms) to fp32: on qwen-7b's 151,936-row tables that is 2.3 GiB more than bf16.
        estimate.weight_bytes += shape.unquantized_params * max(0, 4 - estimate.param_bytes)

    @hookimpl
    def load_model(self, ctx):
        try:
            if self._in_memory(ctx):
                return self._random_in_memory(ctx)
            return load_base_model(ctx, quantization_config(self.options, ctx.dtype))
        except ImportError as err:
            raise RowFailed(f"bnb: {err}") from None

    def _in_memory(self, ctx) -> bool:
        source = ctx.model_source
        if source.kind != "preset" or self.options.preset_weights == "checkpoint":
            return False
        if self.options.preset_weights == "in_memory":
            return True
        # The 72b shape's bf16 checkpoint (145 GB) would fill a 64 GiB disk before a step runs.
        cache = loading.cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        if loading.preset_checkpoint_exists(source.preset, ctx.dtype):
            return False
        needed = source.preset.num_params() * ctx.dtype.itemsize
        return 2 * needed > shutil.disk_usage(cache).free

    def _random_in_memory(self, ctx):
        from tunerkit_plugins.quant.random_bnb import random_bnb_model

        ctx.state["bnb:preset_weights"] = "in_memory"
        return random_bnb_model(ctx.model_source.preset, self.options, ctx.dtype, ctx.device, row_attention(ctx))

    @hookimpl
    def modify_model(self, ctx):
        if not self.options.prepare:
            return
        from peft import prepare_model_for_kbit_training

        # Checkpointing stays the core's business (the row's setting, non-reentrant).
        ctx.model = prepare_model_for_kbit_training(ctx.model, use_gradient_checkpointing=False)

    @hookimpl
    def collect_metrics(self, ctx):
        model = ctx.unwrapped_model()
        out = {"quantized_bits": self.options.bits, "quantized_linears": quantized_linears(model),
               "bnb_preset_weights": ctx.state.get("bnb:preset_weights", "checkpoint")}
        if hasattr(model, "get_memory_footprint"):
            out["weights_gib"] = model.get_memory_footprint() / 1024 ** 3
        return out
