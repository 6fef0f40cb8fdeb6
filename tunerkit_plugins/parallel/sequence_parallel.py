"""sequence_parallel: split every sequence across sp_size GPUs with DeepSpeed's Ulysses attention.

accelerate (>= 1.12) drives DeepSpeed's Ulysses for HF models through
``ParallelismConfig(sp_backend="deepspeed", sp_size=N)``: at ``prepare`` it registers
``UlyssesSPAttentionHF`` in place of the model's attention (an all-to-all turns sequence
shards into head shards and back) and wraps the training loader in
``UlyssesSPDataLoaderAdapter``, which gathers one batch from each of the sp ranks, shards
each along the sequence and hands the shards out in turn. So each group of sp GPUs trains
one sample at a time, and the data-parallel width becomes gpus / sp_size: at gpus = 2 and
sp_size = 2 a row takes twice the optimizer steps of plain DDP over the same data.

This plugin supplies what the adapter needs from a batch (``position_ids``, a length that
divides by sp_size), lets the model compute its loss from the adapter's ``shift_labels``,
and reports the data-parallel width. The loss needs no SP-specific reduction: the core
divides every rank's token-summed loss by the label tokens of the whole window (all ranks),
so the losses of one SP group add up to their token-weighted mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tunerkit import Plugin, hookimpl, option
from tunerkit_plugins._helpers.attention_registry import keep_for_row
from tunerkit_plugins.parallel.deepspeed import deepspeed_missing, make_deepspeed_accelerator

IGNORE_INDEX = -100


@dataclass
class SequenceParallelOptions:
    sp_size: int = option(2, "GPUs sharing one sequence (Ulysses); the data-parallel width becomes gpus / sp_size", min=1)


class ShardableCollator:
    """Wraps a row's collator so Ulysses can split its batches along the sequence.

    Adds ``position_ids`` (Ulysses gathers them back to mask causally over the whole
    sequence), right-pads to a multiple of ``multiple`` (pads carry no label, their positions
    keep counting so packed documents stay intact) and drops ``attention_mask``: the adapter
    would shard it only for the Ulysses attention to discard it.
    """

    def __init__(self, inner, multiple: int, pad_token_id: int):
        self.inner, self.multiple, self.pad_token_id = inner, multiple, pad_token_id

    def __call__(self, examples):
        batch = self.inner(examples)
        ids = batch["input_ids"]
        rows, length = ids.shape
        if "position_ids" not in batch:
            batch["position_ids"] = torch.arange(length, dtype=torch.long).expand(rows, length).clone()
        batch.pop("attention_mask", None)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and tuple(value.shape[:2]) != (rows, length):
                raise ValueError(f"sequence_parallel cannot shard batch['{key}'] of shape {tuple(value.shape)} "
                                 f"along the sequence (input_ids: {(rows, length)})")
        pad = (-length) % self.multiple
        if pad:
            fills = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}
            for key, value in list(batch.items()):
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "position_ids":
                    extra = value[:, -1:] + torch.arange(1, pad + 1, dtype=value.dtype)
                else:
                    extra = torch.full((rows, pad), fills.get(key, 0), dtype=value.dtype)
                batch[key] = torch.cat([value, extra], dim=1)
        return batch


class SequenceParallel(Plugin):
    name = "sequence_parallel"
    conformance = {"companions": ["lora"],
                   "skip": "needs sp_size processes; tests/plugins/test_sequence_parallel.py covers it"}
    summary = "Ulysses sequence parallelism (DeepSpeed through accelerate): sp_size GPUs share each sequence"
    Options = SequenceParallelOptions
    # Their varlen boundaries (cu_seq_lens) cannot be cut along the sequence.
    conflicts = ("packing", "padding_free")

    @property
    def sp_size(self) -> int:
        return self.options.sp_size

    @hookimpl
    def validate(self, row):
        missing = deepspeed_missing()
        if missing:
            return missing
        s = row.settings
        if s.gpus % self.sp_size:
            return f"sequence_parallel: gpus = {s.gpus} is not a multiple of sp_size = {self.sp_size}"
        if self.sp_size == 1:
            return None
        if s.attention == "eager":
            return "sequence_parallel needs attention = 'sdpa' or 'flash' (Ulysses cannot use eager's 4-D mask)"
        if s.batch_size != 1:
            return ("sequence_parallel needs batch_size = 1 (Ulysses fixes the micro-batch size; "
                    "use gradient_accumulation_steps for more samples per step)")
        from tunerkit.models.loading import resolve_model

        preset = resolve_model(s.model).preset
        if preset is not None:
            if preset.heads % self.sp_size:
                return f"sequence_parallel: {preset.heads} attention heads do not split over sp_size = {self.sp_size}"
            if preset.kv_heads % self.sp_size and self.sp_size % preset.kv_heads:
                return (f"sequence_parallel: {preset.kv_heads} KV heads and sp_size = {self.sp_size}: "
                        f"one must divide the other")
        return None

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        # Ulysses gives each of the sp_size GPUs 1/sp_size of every sequence (padded to a
        # multiple of it), and its all-to-all trades the rest of the sequence for 1/sp_size of
        # the heads inside attention: every activation a GPU keeps is that of its share of the
        # tokens. Weights, gradients and optimizer state are each GPU's whole.
        sp = self.sp_size
        if sp == 1:
            return
        estimate.peak_tokens = math.ceil(estimate.peak_tokens / sp)
        if estimate.real_peak_tokens is not None:
            estimate.real_peak_tokens = math.ceil(estimate.real_peak_tokens / sp)
        estimate.notes.append(f"tokens/s is one GPU's compute alone: Ulysses' all-to-all between the {sp} GPUs "
                              f"of a sequence is not counted")

    @hookimpl
    def setup_distributed(self, ctx):
        if self.sp_size == 1:
            return None  # plain DDP (or the deepspeed plugin's ZeRO, when the row has it)
        # After the row: DeepSpeed's SP groups go (a later row of the same run sets up its own)
        # and the registry entry Ulysses replaces comes back; make_deepspeed_accelerator
        # resets accelerate's state, else the next row's plain Accelerator() inherits Ulysses.
        ctx.on_teardown(release_sequence_parallel_groups)
        keep_for_row(ctx)
        return make_deepspeed_accelerator(ctx)

    @hookimpl(wrapper=True)
    def make_collator(self, ctx, split):
        collator = yield
        if split != "train" or self.sp_size == 1:
            return collator  # evaluation runs unsharded (accelerate registers Ulysses with disable_in_eval)
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer is not None else None
        return ShardableCollator(collator, self.sp_size, pad if pad is not None else 0)

    @hookimpl(wrapper=True)
    def compute_loss(self, ctx, model, batch):
        # The adapter replaces labels by sequence-sharded, already shifted `shift_labels`.
        # transformers' causal-LM loss uses shift_labels when given, but only computes a loss
        # when labels is not None.
        if "shift_labels" in batch and "labels" not in batch:
            batch["labels"] = batch["shift_labels"]
        return (yield)

    @hookimpl
    def collect_metrics(self, ctx):
        return {"sp_size": self.sp_size, "effective_dp_size": max(ctx.world_size // self.sp_size, 1)}


def release_sequence_parallel_groups() -> None:
    """Forget DeepSpeed's SP groups so a later row of the same run can set up its own."""
    try:
        from deepspeed.runtime.sequence_parallel import parallel_state_sp
        from deepspeed.utils import groups
    except ImportError:
        return
    release = getattr(parallel_state_sp, "_release_sequence_parallel_groups", None)
    if release is not None:
        release()
    if getattr(groups, "mpu", None) is parallel_state_sp:
        groups.mpu = None
