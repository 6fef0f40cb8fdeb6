"""Accounting across processes: data-parallel width, label tokens of sharded batches, global throughput.

Under plain DDP every process trains its own samples. Under sequence parallelism the
processes of one group train the same samples, each on a slice of every sequence: the
data-parallel width is the world size divided by the group size, every process of a group
sees the group's sample and token counts (``num_samples``/``num_tokens`` travel with each
shard), and each process holds only its shard's labels. These helpers keep the loop's
figures right in both cases, for any engine configured through ``accelerate``.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def count_shifted_labels(labels: torch.Tensor) -> int:
    """Label tokens the causal loss really scores (the first position predicts nothing)."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def data_parallel_size(ctx) -> int:
    """Processes that train different samples: the world size over the sequence/tensor-parallel groups."""
    pc = getattr(ctx.accelerator, "parallelism_config", None)
    shared = pc.non_data_parallel_size if pc is not None else 1
    return max(ctx.world_size // max(shared, 1), 1)


def count_label_tokens(batch: dict) -> int:
    """Label tokens the causal loss scores in one batch.

    A sequence-parallel shard carries ``shift_labels`` (already shifted; the adapter drops
    ``labels``), where every entry that is not -100 is scored.
    """
    if "shift_labels" in batch:
        return int((batch["shift_labels"] != IGNORE_INDEX).sum())
    return count_shifted_labels(batch["labels"])


def global_throughput(ctx, throughput) -> dict:
    """Samples, tokens and speeds of all processes together, and per GPU.

    ``throughput`` is this process's :class:`tunerkit.metrics.Throughput`. Every process
    must call this (it reduces across processes). Samples and tokens counted by each process
    of a sequence-parallel group are the group's, so their sum is divided by the group size;
    label tokens are each shard's own and simply add up. Seconds are this process's (steps
    end in a collective, so all processes agree up to noise).
    """
    world = ctx.world_size
    shared = world // data_parallel_size(ctx)
    replicated = torch.tensor([throughput.timed_samples, throughput.timed_tokens, throughput.total_samples,
                               throughput.total_tokens], dtype=torch.float64, device=ctx.device)
    labels = torch.tensor([throughput.total_label_tokens], dtype=torch.float64, device=ctx.device)
    if world > 1:
        replicated = ctx.accelerator.reduce(replicated, reduction="sum") / shared
        labels = ctx.accelerator.reduce(labels, reduction="sum")
    timed_samples, timed_tokens, samples, tokens = (float(v) for v in replicated.tolist())
    out = {"train_samples": round(samples), "train_tokens": round(tokens), "train_label_tokens": round(float(labels)),
           "world_size": world, "data_parallel_size": data_parallel_size(ctx)}
    if throughput.timed_seconds > 0:
        out["samples_per_s"] = timed_samples / throughput.timed_seconds
        out["tokens_per_s"] = timed_tokens / throughput.timed_seconds
        out["samples_per_s_per_gpu"] = out["samples_per_s"] / world
        out["tokens_per_s_per_gpu"] = out["tokens_per_s"] / world
    return out
