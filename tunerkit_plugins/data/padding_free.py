"""padding_free: each micro-batch flattened into one row, no pad tokens, per-sample attention.

The same collator and varlen attention as ``packing`` (:mod:`.varlen_attention`), without
the bin packing: a micro-batch of ``batch_size`` samples of any lengths becomes one row of
exactly their tokens. Losses equal the padded batch's; no compute is spent on padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunerkit import Plugin, hookimpl, option
from tunerkit_plugins._helpers import estimates
from tunerkit_plugins.data.packing import Kernel
from tunerkit_plugins.data.varlen_attention import FlatBatchHooks


@dataclass
class PaddingFreeOptions:
    kernel: Kernel = option("auto", "varlen attention: auto = flash_attn, else torch varlen_attn, else SDPA per sample")


class PaddingFree(FlatBatchHooks, Plugin):
    name = "padding_free"
    conformance = {"companions": ["lora"]}
    summary = "micro-batches flattened into one row without padding, varlen attention per sample"
    Options = PaddingFreeOptions
    conflicts = ("packing",)

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        estimates.flattened(estimate)
