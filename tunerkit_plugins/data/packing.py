"""packing: whole samples bin-packed into rows, attention confined to each sample.

Best-fit decreasing (:mod:`tunerkit.data.packing`) fills rows of ``row_length`` tokens
(``max_length`` unless set) with whole samples, each already cut to ``max_length``; the flattening collator restarts ``position_ids`` per sample and sends
the varlen boundaries, and the varlen attention function (:mod:`.varlen_attention`) keeps
every token's attention inside its own sample. The first label of each sample is -100, so
no loss crosses a boundary: per-sample losses equal the unpacked ones.

Counting: every batch reports the original samples and real tokens inside it, so
samples/s and tokens/s compare with unpacked rows (ms-swift's benchmark counted packed rows as samples).
When the data is streamed (``lazy_tokenize``) rows are packed per buffer of
``buffer_size`` samples and the number of rows per pass is estimated from a probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch.utils.data import IterableDataset

from tunerkit import Plugin, hookimpl, option
from tunerkit_plugins._helpers import estimates
from tunerkit_plugins.data.varlen_attention import KERNELS, FlatBatchHooks

Kernel = Literal["auto", "flash_attn", "torch_varlen", "sdpa"]
assert set(Kernel.__args__) == set(KERNELS)


@dataclass
class PackingOptions:
    buffer_size: int = option(1000, "samples packed together when the data is streamed (lazy_tokenize)", min=1)
    kernel: Kernel = option("auto", "varlen attention: auto = flash_attn, else torch varlen_attn, else SDPA per sample")
    row_length: int | None = option(None, "tokens per packed row (unset: max_length); samples are still cut "
                                    "at max_length, so rows may hold several long samples", added_later=True)

    def __post_init__(self):
        if self.row_length is not None and self.row_length < 1:
            raise ValueError(f"row_length must be >= 1, got {self.row_length}")


def row_capacity(options: PackingOptions, max_length: int) -> int:
    """Tokens per packed row: the option, else the row's max_length."""
    return options.row_length if options.row_length is not None else max_length


class Packing(FlatBatchHooks, Plugin):
    name = "packing"
    conformance = {"companions": ["lora"]}
    summary = "best-fit-decreasing packing into max_length rows with per-sample varlen attention"
    Options = PackingOptions
    #: the fast mode (speed = "max"): rows filled with whole samples
    fast_switch = {}
    fast_order = 10
    conflicts = ("padding_free",)

    @hookimpl
    def validate(self, row):
        if row_capacity(self.options, row.settings.max_length) < row.settings.max_length:
            return (f"packing.row_length ({self.options.row_length}) is below max_length "
                    f"({row.settings.max_length}): a sample of max_length tokens would fit no row; "
                    "raise row_length or lower max_length")
        return None

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        # rows filled with whole samples up to max_length
        estimates.packed_rows(estimate, row.settings.batch_size * row.settings.max_length)

    @hookimpl
    def transform_dataset(self, ctx, split):
        if split != "train" or split not in ctx.datasets:
            return
        from tunerkit.data import packing

        capacity = row_capacity(self.options, ctx.settings.max_length)
        data = ctx.datasets[split]
        if isinstance(data, IterableDataset):
            packer = packing.StreamingPacker(data, capacity, self.options.buffer_size, ctx.settings.seed)
            self._packer = packer
            rows = packer.estimate_rows()
            if rows is not None:
                probe = data.probe_lengths()
                # Planning figure for token budgets: tokens per packed row.
                ctx.metrics["train_mean_tokens"] = sum(probe) / len(packing.best_fit_decreasing(probe, capacity))
                ctx.metrics["packed_rows_estimated"] = rows
            ctx.datasets[split] = packer
            return
        rows = packing.pack_samples(list(data), capacity)
        ctx.metrics.update(packing.packing_stats(rows, capacity))
        ctx.datasets[split] = rows

    @hookimpl
    def collect_metrics(self, ctx):
        packer = getattr(self, "_packer", None)
        if packer is None or not packer.rows_yielded:
            return None
        return {"packed_rows_streamed": packer.rows_yielded,
                "packing_efficiency": packer.tokens_yielded / (packer.rows_yielded * packer.capacity)}
