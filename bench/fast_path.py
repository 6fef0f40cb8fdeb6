"""The fast path beside the plain HF + PEFT baseline, in one process on one GPU.

    PYTHONUNBUFFERED=1 python bench/fast_path.py --check-loss        # the whole thing; no config starts after --time-limit (420 s)
    python bench/fast_path.py --list                                  # config names
    python bench/fast_path.py --configs 7b/baseline,7b/lora+liger     # a selection
    python bench/fast_path.py --smoke                                 # tiny shapes on CPU: the script's plumbing

(a) Baseline, written with plain transformers + peft (no tunerkit code in the training
path): the qwen-7b-chat preset's shape (Qwen2, hidden 4096, 32 layers, ffn 11008, vocab
151936, random bf16 weights), LoRA r8 alpha 32 dropout 0.05 on q,k,v, batch 1, gradient
checkpointing (non-reentrant), SDPA, torch fused AdamW, transformers' loss.
(b) tunerkit rows through ``tunerkit.loop.run_row`` with the switches of the fast path
(liger, offload, compile, padding_free, packing).

Same samples everywhere: ``tunerkit.data.synthetic`` draws the seed's cls-fudan-news-zh
lengths (``synthetic:lengths``), each sample cut to its first 2048 tokens. The baseline
walks them in the order tunerkit's loader does (``torch.randperm`` under the row's seed);
tunerkit rows get the same truncated samples handed in by a bench-only hook object
(packing rows need rows of 16k tokens while samples stay cut at 2048, which no single
``max_length`` gives), and every trained sample is hashed: batch-1 rows must train the
baseline's samples in the baseline's order, packed rows only samples of the same set.

Timing: each config runs warm-up steps, then timed steps (a fixed count for batch-1
configs, a fixed token budget for packed ones), timed like tunerkit's loop (synchronised
step wall time, data transfer and optimizer step included). Model FLOPs count the
matmuls a step must do: forward 2N, input gradients 2N, weight gradients 2N only for
trained weights (LoRA: 4N frozen + 6N adapters per token; full: 6N), N = every linear
weight incl. the LM head, plus causal attention 6*L^2*hidden per layer and sample. MFU
divides them by the step time and 790 TFLOP/s (an 8192^3 bf16 matmul on the H100); HFU
adds the forward recompute of gradient checkpointing.

Every config is wrapped in try/except (OOM included) and printed as it finishes; JSON
goes to $OUT/fast_path.json (and --json) after every config, so a cut run keeps its rows.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installation
    sys.path.insert(0, str(REPO))

import tunerkit  # noqa: E402
from tunerkit.hookspecs import hookimpl  # noqa: E402

PEAK_TFLOPS = 790.0
GIB = 1024 ** 3
SPEC = "synthetic:lengths"  # dist=cls-fudan-news-zh, 2000 rows


# -----------------------------------------------------------------------------------------
# Configs
# -----------------------------------------------------------------------------------------


@dataclass
class Config:
    name: str
    family: str  # "7b" (LoRA on the 7b shape) or "1.8b" (full fine-tuning on the 1.8b shape)
    plugins: list[str] = field(default_factory=list)  # empty: the plain baseline
    options: dict = field(default_factory=dict)
    pack_factor: float = 0  # packed rows of pack_factor * sample_max tokens (0: one sample per step)
    default: bool = True
    note: str = ""
    settings: dict = field(default_factory=dict)  # row settings beyond the bench's fixed ones

    @property
    def baseline(self) -> bool:
        return not self.plugins


#: liger with its fused linear cross-entropy only (the one liger kernel allowed beside compile)
FLCE_ONLY = {"liger": {"rope": False, "rms_norm": False, "swiglu": False}}
#: beside compile: the fused cross-entropy, and offload starting 3 (or 1) copies back ahead
FLCE_PREFETCH = {**FLCE_ONLY, "offload": {"prefetch": 3}}
FLCE_PREFETCH1 = {**FLCE_ONLY, "offload": {"prefetch": 1}}

AUTOCAST = {"autocast": True}


def flce_chunks(options: dict, const: int) -> dict:
    """``options`` with liger's fused cross-entropy chunk budget (``chunk_mem_const``) set to ``const``."""
    return {**options, "liger": {**options["liger"], "chunk_mem_const": const}}


OVERLAP = {"overlap_steps": True}
AUTOCAST_OVERLAP = {**AUTOCAST, **OVERLAP}


def partial_checkpointing(tokens_k: int, left_out: int, default: bool = True) -> Config:
    """Packed ``tokens_k``-k rows, compile, fused cross-entropy, prefetched offload, and
    ``left_out`` of the 32 layers not checkpointed."""
    return Config(f"7b/lora+packing{tokens_k}k+compile+liger_flce+offload_prefetch+uncheckpointed{left_out}", "7b",
                  ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH, pack_factor=tokens_k // 2,
                  settings={"uncheckpointed_layers": left_out}, default=default)


CONFIGS = [
    Config("7b/baseline", "7b", note="plain transformers + peft"),
    Config("7b/lora", "7b", ["lora"], note="tunerkit with no switch: the loop's own overhead"),
    Config("7b/lora+liger", "7b", ["lora", "liger"]),
    # liger's fused linear cross-entropy cuts a step's tokens into chunks of about
    # tokens / (vocab / hidden) rows (~64 at 1.8k tokens and Qwen's 152k vocabulary): small
    # matmuls. This config keeps the other kernels and the plain loss, to see what the chunking costs.
    Config("7b/lora+liger-noflce", "7b", ["lora", "liger"],
           {"liger": {"fused_linear_cross_entropy": False}}),
    Config("7b/lora+liger+offload", "7b", ["lora", "liger", "offload"]),
    # SDPA pinned to its FlashAttention-2 kernel (memory-efficient as the fallback): on Hopper
    # torch 2.11 prefers cuDNN attention; this config shows whether that choice costs speed.
    Config("7b/lora+sdpa_flash", "7b", ["lora"], settings={"sdpa_kernels": ["flash", "efficient"]}),
    Config("7b/lora+packing8k+liger+offload", "7b", ["lora", "packing", "liger", "offload"], pack_factor=4,
           note="shorter packed rows: less activation memory (the <= 15 GiB target)"),
    Config("7b/lora+packing4k+liger+offload", "7b", ["lora", "packing", "liger", "offload"], pack_factor=2,
           note="the 15 GiB point: batch-1 liger+offload peaked at 14.9 GiB"),
    Config("7b/lora+packing16k", "7b", ["lora", "packing"], pack_factor=8),
    Config("7b/lora+packing16k+liger", "7b", ["lora", "packing", "liger"], pack_factor=8),
    Config("7b/lora+packing16k+liger+offload", "7b", ["lora", "packing", "liger", "offload"], pack_factor=8),
    # selective checkpointing keeps matmul/attention outputs: no matmul recompute, more memory.
    Config("7b/lora+selective_checkpointing", "7b", ["lora", "selective_checkpointing"]),
    Config("7b/lora+packing8k+liger+selective_checkpointing", "7b",
           ["lora", "packing", "liger", "selective_checkpointing"], pack_factor=4),
    Config("1.8b/baseline", "1.8b", note="plain transformers, full fine-tuning"),
    Config("1.8b/full+packing16k+liger", "1.8b", ["full", "packing", "liger"], pack_factor=8),
    # compile with liger's in-layer kernels is refused (dynamo fails inside liger's RMSNorm,
    # torch 2.11 / liger-kernel 0.8.5); its fused linear cross-entropy runs outside the compiled
    # layers, so compile + that loss alone is allowed. The baseline's profile showed the GPU idle
    # for most of a batch-1 step (launch-bound): the first suspect compile goes after.
    Config("7b/lora+packing16k+compile", "7b", ["lora", "packing", "compile"], pack_factor=8),
    Config("7b/lora+compile+liger_flce+offload", "7b", ["lora", "compile", "liger", "offload"], FLCE_ONLY,
           note="batch 1, fewer launches, no logits, offloaded checkpoints: the <= 15 GiB point"),
    Config("7b/lora+packing4k+compile+liger_flce+offload", "7b", ["lora", "packing", "compile", "liger", "offload"],
           FLCE_ONLY, pack_factor=2),
    Config("7b/lora+packing16k+compile+liger_flce", "7b", ["lora", "packing", "compile", "liger"], FLCE_ONLY,
           pack_factor=8),
    Config("7b/lora+packing16k+compile+liger_flce+offload", "7b", ["lora", "packing", "compile", "liger", "offload"],
           FLCE_ONLY, pack_factor=8, default=False),
    # offload's copies back ran on the compute stream (10 % of a packed step's GPU time on one
    # H200): prefetch starts them a few saved tensors ahead on a side stream (about one layer:
    # its input and the rotary cos/sin each leave the GPU).
    Config("7b/lora+packing16k+liger+offload_prefetch", "7b", ["lora", "packing", "liger", "offload"],
           {"offload": {"prefetch": 3}}, pack_factor=8),
    Config("7b/lora+compile+liger_flce+offload_prefetch", "7b", ["lora", "compile", "liger", "offload"],
           FLCE_PREFETCH, note="batch 1: the <= 15 GiB point with prefetched copies"),
    # prefetch 3 ran 1.38x at 15.03 GiB on one H200, 47 MiB above the 15.0 GiB point: one
    # layer input in flight instead of three.
    Config("7b/lora+compile+liger_flce+offload_prefetch1", "7b", ["lora", "compile", "liger", "offload"],
           FLCE_PREFETCH1, note="batch 1: one prefetched copy at a time"),
    Config("7b/lora+packing16k+compile+liger_flce+offload_prefetch", "7b",
           ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH,
           pack_factor=8),
    # PEFT's fp32 adapter weights: their matmuls ran as fp32 FMA kernels (37 ms of the 990 GPU-busy ms of a packed 16k step).
    Config("7b/lora+packing16k+compile+liger_flce+offload_prefetch+tf32", "7b",
           ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH,
           pack_factor=8, settings={"tf32": True}),
    Config("7b/lora+compile+liger_flce+offload_prefetch1+tf32", "7b", ["lora", "compile", "liger", "offload"],
           FLCE_PREFETCH1, settings={"tf32": True}),
    Config("7b/lora+packing8k+compile+liger_flce+offload_prefetch", "7b",
           ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH,
           pack_factor=4),
    # Gradient checkpointing for only some layers: the layers left out keep their activations
    # and skip the recompute (a third of a LoRA step's matmul work), at their memory each.
    *[partial_checkpointing(tokens_k, left_out) for tokens_k, left_out in ((8, 3), (4, 8), (8, 24), (16, 12))],
    # Under 40 GiB: on one H200 a left-out layer kept 1.2 GiB per 8k tokens (0.6 per 4k).
    *[partial_checkpointing(tokens_k, left_out, default=False) for tokens_k, left_out in ((4, 28), (6, 24), (8, 20))],
    Config("7b/lora+packing4k+compile+liger_flce+no_checkpointing", "7b", ["lora", "packing", "compile", "liger"],
           FLCE_ONLY, pack_factor=2, settings={"gradient_checkpointing": False}, default=False,
           note="no layer checkpointed: the recompute gone, every activation kept"),
    Config("7b/lora+packing4k+compile+liger_flce+no_checkpointing+tf32", "7b", ["lora", "packing", "compile", "liger"],
           FLCE_ONLY, pack_factor=2, settings={"gradient_checkpointing": False, "tf32": True}, default=False),
    # autocast: PEFT's fp32 adapters run their matmuls in bf16 (fp32 masters kept), so autograd
    # keeps bf16 copies of their inputs instead of fp32 ones; overlap: no host-GPU sync between
    # steps. Each beside the same config without them, in one process.
    *[replace(c, name=c.name + suffix, settings={**c.settings, **extra}, default=False)
      for c in (Config("7b/lora+compile+liger_flce+offload_prefetch1", "7b", ["lora", "compile", "liger", "offload"],
                       FLCE_PREFETCH1),)
      for suffix, extra in (("+overlap", OVERLAP), ("+autocast", AUTOCAST), ("+autocast+overlap", AUTOCAST_OVERLAP))],
    Config("7b/lora+packing2k+compile+liger_flce+offload_prefetch1+autocast+overlap", "7b",
           ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH1, pack_factor=1,
           settings=AUTOCAST_OVERLAP, default=False,
           note="the <= 15 GiB point with rows filled to 2048 tokens"),
    *[Config(f"7b/lora+packing{k}k+compile+liger_flce+no_checkpointing+{suffix}", "7b",
             ["lora", "packing", "compile", "liger"], FLCE_ONLY, pack_factor=k / 2,
             settings={"gradient_checkpointing": False, **extra}, default=False)
      for k, suffix, extra in ((4, "autocast", AUTOCAST), (4, "autocast+overlap", AUTOCAST_OVERLAP),
                               (5, "autocast+overlap", AUTOCAST_OVERLAP), (6, "autocast+overlap", AUTOCAST_OVERLAP))],
    Config("7b/lora+packing16k+compile+liger_flce+offload_prefetch+autocast+overlap", "7b",
           ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH, pack_factor=8,
           settings=AUTOCAST_OVERLAP, default=False),
    *[replace(partial_checkpointing(tokens_k, left_out, default=False),
              name=partial_checkpointing(tokens_k, left_out).name + "+autocast+overlap",
              settings={"uncheckpointed_layers": left_out, **AUTOCAST_OVERLAP})
      for tokens_k, left_out in ((8, 2), (16, 1))],
    # liger's fused cross-entropy in chunks of 64 tokens at batch 1 reads the 1.2 GiB lm_head
    # weight 56-64 times a step; chunk_mem_const C lets a chunk's logits hold C x tokens x hidden.
    *[Config(f"7b/lora+compile+liger_flce_chunk{c}+offload_prefetch1+autocast", "7b",
             ["lora", "compile", "liger", "offload"], flce_chunks(FLCE_PREFETCH1, c), settings=AUTOCAST, default=False)
      for c in (2, 4)],
    Config("7b/lora+packing2k+compile+liger_flce_chunk4+offload_prefetch1+autocast", "7b",
           ["lora", "packing", "compile", "liger", "offload"], flce_chunks(FLCE_PREFETCH1, 4), pack_factor=1,
           settings=AUTOCAST, default=False),
    *[Config(f"7b/lora+packing6k+compile+{liger}+no_checkpointing+autocast", "7b",
             ["lora", "packing", "compile", "liger"], options, pack_factor=3,
             settings={"gradient_checkpointing": False, **AUTOCAST}, default=False)
      for liger, options in (("liger_flce", FLCE_ONLY), ("liger_flce_chunk4", flce_chunks(FLCE_ONLY, 4)))],
    # The batch-1 step waits on the host (run M's profile: the compiled layers' Python launch
    # code, autograd's wrappers, dynamo's guards): inductor's C++ launch code and guards skipped
    # after the warm-up, each alone and together.
    *[Config(f"7b/lora{pack}+compile_{tag}+{liger}+offload_prefetch1+autocast", "7b",
             ["lora", *(["packing"] if pack else []), "compile", "liger", "offload"],
             {**flce_chunks(FLCE_PREFETCH1, chunks), "compile": compile_options}, pack_factor=1 if pack else 0,
             settings=AUTOCAST, default=False)
      for pack, tag, compile_options, liger, chunks in (
          ("", "guardskip", {"skip_guard_eval": True}, "liger_flce", 1),
          ("", "cpp", {"cpp_wrapper": True}, "liger_flce", 1),
          ("", "cpp_guardskip", {"cpp_wrapper": True, "skip_guard_eval": True}, "liger_flce", 1),
          ("", "cpp_guardskip", {"cpp_wrapper": True, "skip_guard_eval": True}, "liger_flce_chunk4", 4),
          ("+packing2k", "cpp_guardskip", {"cpp_wrapper": True, "skip_guard_eval": True}, "liger_flce_chunk4", 4))],
    # At the baseline's memory (19.1 GiB) with every layer checkpointed: bigger fused
    # cross-entropy chunks, and rows between 16k and the 32k that no longer fit.
    *[Config(f"7b/lora+packing{k}k+compile+{liger}+offload_prefetch+autocast", "7b",
             ["lora", "packing", "compile", "liger", "offload"], flce_chunks(FLCE_PREFETCH, c), pack_factor=k / 2,
             settings=AUTOCAST, default=False)
      for k, liger, c in ((16, "liger_flce_chunk4", 4), (20, "liger_flce_chunk4", 4), (20, "liger_flce", 1),
                          (22, "liger_flce", 1))],
    # One copy back in flight instead of three (0.4 GiB less at 16k rows): room for longer rows.
    Config("7b/lora+packing24k+compile+liger_flce+offload_prefetch1+autocast", "7b",
           ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH1, pack_factor=12, settings=AUTOCAST,
           default=False),
    # Packed rows' attention pinned to torch's varlen FlashAttention-2 (what auto resolves to
    # without the flash-attn package), and through SDPA sample by sample (cuDNN's attention on
    # Hopper, which ran its forward faster and its backward slower; bench/attention_kernels.py).
    *[replace(c, name=c.name + suffix, options={**c.options, "packing": {"kernel": kernel}}, default=False)
      for c in (Config("7b/lora+packing6k+compile+liger_flce_chunk4+no_checkpointing+autocast", "7b",
                       ["lora", "packing", "compile", "liger"], flce_chunks(FLCE_ONLY, 4), pack_factor=3,
                       settings={"gradient_checkpointing": False, **AUTOCAST}),
                Config("7b/lora+packing16k+compile+liger_flce+offload_prefetch+autocast", "7b",
                       ["lora", "packing", "compile", "liger", "offload"], FLCE_PREFETCH, pack_factor=8,
                       settings=AUTOCAST),
                replace(partial_checkpointing(16, 1), name=partial_checkpointing(16, 1).name + "+autocast",
                        settings={"uncheckpointed_layers": 1, **AUTOCAST}))
      for suffix, kernel in (("+flash2", "torch_varlen"), ("+sdpa_per_sample", "sdpa"))],
    Config("7b/lora+liger+offload+autocast+overlap", "7b", ["lora", "liger", "offload"],
           settings=AUTOCAST_OVERLAP, default=False, note="batch 1, uncompiled: the loss check of the two switches"),
    # Not in the default set (time; the first two were measured on one H200): select with --configs.
    Config("7b/lora+padding_free+liger+offload", "7b", ["lora", "padding_free", "liger", "offload"],
           note="batch 1 through the varlen kernel", default=False),
    Config("7b/lora+packing32k+liger", "7b", ["lora", "packing", "liger"], pack_factor=16, default=False),
    Config("7b/lora+packing16k+liger+selective_checkpointing", "7b",
           ["lora", "packing", "liger", "selective_checkpointing"], pack_factor=8, default=False),
    Config("7b/lora+compile", "7b", ["lora", "compile"], default=False),

    Config("7b/lora+packing32k+liger+offload", "7b", ["lora", "packing", "liger", "offload"], pack_factor=16,
           default=False),
    Config("7b/lora+packing64k+liger+offload", "7b", ["lora", "packing", "liger", "offload"], pack_factor=32,
           default=False),
    Config("1.8b/full+liger", "1.8b", ["full", "liger"], default=False),
    Config("1.8b/full+packing16k+liger+offload", "1.8b", ["full", "packing", "liger", "offload"], pack_factor=8,
           default=False),
]
BY_NAME = {c.name: c for c in CONFIGS}

TARGETS = [
    # (label, family, speed test on the ratio to the baseline, memory test on (peak alloc, baseline's))
    (">= 2.5x baseline tokens/s at <= baseline peak allocated", "7b", lambda x: x >= 2.5, lambda m, base: m <= base),
    (">= 3x baseline tokens/s at < 40 GiB allocated", "7b", lambda x: x >= 3.0, lambda m, base: m < 40.0),
    ("> 1.36x baseline tokens/s at <= 15.0 GiB allocated", "7b", lambda x: x > 1.36, lambda m, base: m <= 15.0),
    (">= 2x baseline tokens/s, 1.8b full fine-tuning", "1.8b", lambda x: x >= 2.0, lambda m, base: True),
]


# -----------------------------------------------------------------------------------------
# Data: the same truncated samples, in tunerkit's loader order
# -----------------------------------------------------------------------------------------


def make_samples(vocab: int, seed: int, sample_max: int) -> list[dict]:
    """tunerkit's synthetic samples (dataset order), each cut to its first ``sample_max`` tokens."""
    from tunerkit.data.synthetic import synthetic_records

    out = []
    for r in synthetic_records(SPEC, vocab, seed):
        ids = r["input_ids"][:sample_max]
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def loader_order(n: int, seed: int) -> list[int]:
    """The order tunerkit's training loader visits ``n`` samples: a DataLoader built as
    ``tunerkit.loop.make_loader`` builds it (shuffle, generator seeded with the row seed).
    Iterating a loader draws its base seed from the generator before the sampler's
    permutation, so the order is read off a loader, not from ``torch.randperm``."""
    from torch.utils.data import DataLoader

    loader = DataLoader(range(n), batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(seed),
                        collate_fn=lambda batch: batch[0])
    return list(loader)


def token_hash(ids) -> str:
    arr = np.asarray(ids, dtype=np.int64)
    return hashlib.sha1(arr.tobytes()).hexdigest()[:16]


class TokenIdsOnly:
    """The tokenizer a row of token ids needs: a pad id (the data is synthetic token ids)."""

    pad_token_id = 0
    eos_token_id = 0
    bos_token_id = None
    pad_token = eos_token = "<pad>"


class BenchProbe:
    """Bench-only hooks registered beside a row's plugins.

    Hands the row the bench's samples and no tokenizer, and records, for every
    micro-batch, the token hash and length of each sample inside it (for the same-samples
    check and the attention FLOPs).
    """

    def __init__(self, samples: list[dict], profiler=None, profile_from: int = 0, profile_steps: int = 0):
        self.samples = samples
        self.steps: list[dict] = []
        self.profiler, self.profile_from, self.profile_steps = profiler, profile_from, profile_steps

    @hookimpl
    def on_step_begin(self, ctx):
        if self.profiler is not None and ctx.global_step == self.profile_from:
            self.profiler.start()

    @hookimpl
    def on_step_end(self, ctx):
        # global_step counts finished steps and is raised after this hook: this is step global_step + 1.
        if self.profiler is not None and ctx.global_step + 1 == self.profile_from + self.profile_steps:
            self.profiler.stop(self.profile_steps)

    @hookimpl(tryfirst=True)
    def load_tokenizer(self, ctx):
        return TokenIdsOnly()

    @hookimpl(tryfirst=True)
    def load_dataset(self, ctx, split):
        return list(self.samples) if split == "train" else []

    @hookimpl(wrapper=True)
    def make_collator(self, ctx, split):
        collate = yield
        if split != "train":
            return collate

        def recording(examples):
            # Read on the host as the batch is collated: reading it on the GPU later would
            # wait for the device inside the timed step (and end overlap_steps' overlap).
            batch = collate(examples)
            self.record(batch)
            return batch

        return recording

    def record(self, batch: dict) -> None:
        """One micro-batch's samples (the bench runs one micro-batch per step, in loader order)."""
        ids = batch["input_ids"].detach()
        if "cu_seq_lens_q" in batch:
            cu = batch["cu_seq_lens_q"].reshape(-1).tolist()
            flat = ids.reshape(-1)
            docs = [flat[s:e] for s, e in zip(cu[:-1], cu[1:]) if e > s]
        else:
            mask = batch.get("attention_mask")
            lengths = mask.sum(-1).tolist() if mask is not None else [ids.shape[1]] * ids.shape[0]
            docs = [ids[i, :n] for i, n in enumerate(lengths)]
        self.steps.append({"lengths": [int(d.numel()) for d in docs],
                           "hashes": [token_hash(d.numpy()) for d in docs]})


# -----------------------------------------------------------------------------------------
# FLOPs
# -----------------------------------------------------------------------------------------


@dataclass
class Shape:
    hidden: int
    layers: int
    layer_params: int  # matmul weights of one decoder layer
    head_params: int  # the LM head

    @classmethod
    def of(cls, preset) -> "Shape":
        head_dim = preset.hidden // preset.heads
        kv = preset.kv_heads * head_dim
        attn = 2 * preset.hidden * preset.hidden + 2 * preset.hidden * kv
        mlp = 3 * preset.hidden * preset.ffn
        return cls(preset.hidden, preset.layers, attn + mlp, preset.hidden * preset.vocab)

    @property
    def dense(self) -> int:
        return self.layers * self.layer_params + self.head_params


def step_flops(shape: Shape, lengths: list[int], trained: str, adapter_params: int,
               recomputed_layers: int) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one step over samples of ``lengths`` tokens, of which
    ``recomputed_layers`` decoder layers run their forward again (gradient checkpointing)."""
    tokens = sum(lengths)
    sq = sum(n * n for n in lengths)
    if trained == "full":
        per_token = 6 * shape.dense
    else:  # frozen base: forward and input gradients only; adapters train
        per_token = 4 * shape.dense + 6 * adapter_params
    attention = 6 * sq * shape.hidden * shape.layers  # causal: fwd 2 L^2 h, bwd 4 L^2 h per layer
    model = per_token * tokens + attention
    hardware = model
    if recomputed_layers:  # those layers' forward runs twice (not the head's); adapters spread evenly
        share = recomputed_layers / shape.layers
        adapters = adapter_params if trained != "full" else 0
        recompute = 2 * (recomputed_layers * shape.layer_params + share * adapters) * tokens
        hardware += recompute + 2 * sq * shape.hidden * recomputed_layers
    return float(model), float(hardware)


# -----------------------------------------------------------------------------------------
# Runs
# -----------------------------------------------------------------------------------------


@dataclass
class Family:
    model: str  # preset name
    trained: str  # "lora" or "full"


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def reset_peaks() -> None:
    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peaks() -> dict:
    if not torch.cuda.is_available():
        return {"peak_alloc_gib": None, "peak_reserved_gib": None}
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated() / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB}


def run_baseline(fam: Family, args, samples: list[dict], order: list[int], steps: int, warmup: int,
                 lora_dropout: float, profiler=None) -> dict:
    """Plain transformers + peft: the stack the seed's tool used. No tunerkit code trains here."""
    from transformers import AutoModelForCausalLM, get_scheduler

    from tunerkit.models.presets import get_preset

    preset = get_preset(fam.model)
    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    reset_peaks()
    config = preset.config()
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)  # tunerkit's presets draw their random weights under seed 0: the same weights
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    if fam.trained == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=lora_dropout,
                                                 target_modules=["q_proj", "k_proj", "v_proj"], task_type="CAUSAL_LM"))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "norm" not in n.lower())]
    groups = [g for g in ({"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    trainable = sum(p.numel() for _, p in named)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, fused=dev.type == "cuda")
    total = warmup + steps
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=int(0.03 * total), num_training_steps=total)
    params = [p for _, p in named]
    losses, seconds, lengths, hashes = [], [], [], []
    for step in range(total):
        sample = samples[order[step % len(order)]]
        if profiler is not None and step == warmup:
            profiler.start()
        sync()
        start = time.perf_counter()
        ids = torch.tensor([sample["input_ids"]], device=dev)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.detach().item())
        sync()
        seconds.append(time.perf_counter() - start)
        lengths.append([len(sample["input_ids"])])
        hashes.append([token_hash(sample["input_ids"])])
        del out, ids
    if profiler is not None:
        profiler.stop(steps)
    result = {"status": "ok", **peaks(), "trainable_params": trainable, "losses": losses,
              "step_seconds": seconds, "lengths": lengths, "hashes": hashes, "warmup": warmup,
              "attention": "sdpa"}
    del model, optimizer, scheduler, params, named, groups, decay, no_decay
    free_memory()
    return result


def row_tokens(cfg: Config, args) -> int:
    """Tokens of a config's rows: ``pack_factor`` samples' worth when packed, else one sample's."""
    return int(cfg.pack_factor * args.sample_max) if cfg.pack_factor else args.sample_max


def tunerkit_row(cfg: Config, fam: Family, args, steps: int, warmup: int, lora_dropout: float):
    from tunerkit.recipe import make_row

    pack = row_tokens(cfg, args)
    tables = {}
    if "lora" in cfg.plugins:
        tables["lora"] = {"rank": 8, "alpha": 32.0, "dropout": lora_dropout, "targets": ["q_proj", "k_proj", "v_proj"]}
    for name, opts in cfg.options.items():
        tables[name] = dict(opts)
    fixed = dict(model=fam.model, dataset=SPEC, dtype="auto",
                 attention="sdpa", gradient_checkpointing=True, batch_size=1, gradient_accumulation_steps=1,
                 max_length=pack, truncation_strategy="truncation_right", learning_rate=1e-4,
                 lr_scheduler="cosine", warmup_ratio=0.03, weight_decay=0.01, max_grad_norm=1.0,
                 max_steps=warmup + steps, timing_warmup_steps=warmup, evaluate=[], val_size=0, seed=args.seed)
    return make_row(cfg.name.replace("/", "_"), cfg.plugins, **{**fixed, **tables, **cfg.settings})


def run_tunerkit(cfg: Config, fam: Family, args, samples: list[dict], steps: int, warmup: int,
                 lora_dropout: float, profiler=None) -> dict:
    from tunerkit.loop import run_row

    row = tunerkit_row(cfg, fam, args, steps, warmup, lora_dropout)
    probe = BenchProbe(samples, profiler, profile_from=warmup, profile_steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        m = run_row(row, Path(tmp) / "row", extra_plugins=[probe])
    mem = (m.get("memory") or [{}])[0]
    # accelerate's loader collates one batch ahead of the step it feeds: keep the steps that ran
    del probe.steps[len(m.get("train_loss_curve", [])):]
    return {"status": "ok", "peak_alloc_gib": mem.get("peak_allocated_gib"),
            "peak_reserved_gib": mem.get("peak_reserved_gib"), "trainable_params": m.get("trainable_params"),
            "losses": m.get("train_loss_curve", []), "lengths": [s["lengths"] for s in probe.steps],
            "hashes": [s["hashes"] for s in probe.steps], "warmup": m.get("timing_warmup_steps", warmup),
            "loop_tokens_per_s": m.get("tokens_per_s"), "loop_samples_per_s": m.get("samples_per_s"),
            "attention": m.get("attention"), "packing_efficiency": m.get("packing_efficiency"),
            "offload_gib_per_step": m.get("offload_gib_per_step"), "compiled_layers": m.get("compiled_layers"),
            "liger_kernels": m.get("liger_kernels"), "checkpointing": row.settings.gradient_checkpointing,
            "uncheckpointed_layer_indices": m.get("uncheckpointed_layer_indices"),
            **{k: m[k] for k in ("compile_frames", "compile_graphs", "compile_graph_breaks",
                                 "compile_graph_break_reasons", "compile_recompile_reasons",
                                 "compile_guards_skipped_from_step", "liger_chunk_mem_const", "autocast") if k in m}}


def summarise(result: dict, shape: Shape, trained: str) -> dict:
    """Throughput and utilisation over the timed steps."""
    warm = result["warmup"]
    lengths = result["lengths"][warm:]
    tokens = sum(sum(s) for s in lengths)
    samples = sum(len(s) for s in lengths)
    if "step_seconds" in result:  # the baseline timed its own steps
        seconds = sum(result["step_seconds"][warm:])
    else:  # tunerkit's loop timed them: recover the timed wall time from its tokens/s
        seconds = tokens / result["loop_tokens_per_s"] if result.get("loop_tokens_per_s") else 0.0
    adapter = result.get("trainable_params") or 0
    recomputed = 0 if result.get("checkpointing") is False else \
        shape.layers - len(result.get("uncheckpointed_layer_indices") or [])
    model_f = hw_f = 0.0
    for step in lengths:
        mf, hf = step_flops(shape, step, trained, adapter, recomputed)
        model_f += mf
        hw_f += hf
    out = {"timed_steps": len(lengths), "timed_tokens": tokens, "timed_samples": samples,
           "tokens_per_step": tokens / max(len(lengths), 1)}
    if seconds > 0:
        out.update(tokens_per_s=tokens / seconds, samples_per_s=samples / seconds,
                   mfu_pct=100 * model_f / seconds / (PEAK_TFLOPS * 1e12),
                   hfu_pct=100 * hw_f / seconds / (PEAK_TFLOPS * 1e12))
    return out


def same_samples(result: dict, expected: list[str], all_hashes: set[str], batch_one: bool) -> str:
    """Did the config train the common samples (and, one per step, in the loader's order)?"""
    trained = [h for step in result["hashes"] for h in step]
    if not trained:
        return "no record"
    if any(h not in all_hashes for h in trained):
        return "NO: foreign samples"
    if not batch_one:
        return "same set (packed)"
    return "same order" if trained == expected[:len(trained)] else "NO: other order"


# -----------------------------------------------------------------------------------------
# Loss agreement
# -----------------------------------------------------------------------------------------


def check_loss(args, fams, samples, order) -> dict:
    """50 steps of the baseline and of a batch-1 fast path on the same samples and weights."""
    cfg = BY_NAME[args.check_config]
    if cfg.pack_factor:
        raise SystemExit("--check-config must be a batch-1 config (packed steps hold other samples than the baseline's)")
    fam = fams[cfg.family]
    print(f"\n== loss agreement: {cfg.name} vs {cfg.family}/baseline, {args.check_steps} steps, "
          f"LoRA dropout {args.check_dropout} ==", flush=True)
    out = {"config": cfg.name, "steps": args.check_steps, "lora_dropout": args.check_dropout}
    try:
        base = run_baseline(fam, args, samples, order, args.check_steps, 0, args.check_dropout)
        fast = run_tunerkit(cfg, fam, args, samples, args.check_steps, 0, args.check_dropout)
    except Exception as err:  # noqa: BLE001 - report and go on to the speed table
        out["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        print(out["status"], flush=True)
        free_memory()
        return out
    a, b = np.array(base["losses"]), np.array(fast["losses"])
    n = min(len(a), len(b))
    rel = np.abs(a[:n] - b[:n]) / np.maximum(np.abs(a[:n]), 1e-6)
    expected = [token_hash(samples[i]["input_ids"]) for i in order]
    same = same_samples(fast, expected, set(expected), batch_one=True)
    ok = n == args.check_steps and rel.max() <= args.check_rtol and same == "same order"
    out.update(status="ok", baseline_losses=a.tolist(), fast_losses=b.tolist(), max_rel_diff=float(rel.max()),
               mean_rel_diff=float(rel.mean()), final_baseline=float(a[n - 1]), final_fast=float(b[n - 1]),
               same_samples=same, rtol=args.check_rtol, agree=bool(ok))
    print(f"steps compared {n}; max |rel diff| {rel.max():.2e}, mean {rel.mean():.2e} (tolerance {args.check_rtol:g}); "
          f"final loss baseline {a[n - 1]:.4f} fast {b[n - 1]:.4f}; samples: {same} -> "
          f"{'AGREE' if ok else 'DISAGREE'}", flush=True)
    return out


# -----------------------------------------------------------------------------------------
# Where the time goes
# -----------------------------------------------------------------------------------------


def profile_config(cfg: Config, fam: Family, args, samples: list[dict], order: list[int]) -> dict:
    """A separate short run of one config: its warm-up, then --profile-steps steps under torch.profiler.

    Separate from the timed run so the profiler's overhead never reaches the speed table.
    """
    from kernel_profile import StepProfiler

    warmup = args.packed_warmup if cfg.pack_factor else args.warmup
    prof = StepProfiler()
    if cfg.baseline:
        run_baseline(fam, args, samples, order, args.profile_steps, warmup, args.lora_dropout, profiler=prof)
    else:
        run_tunerkit(cfg, fam, args, samples, args.profile_steps, warmup, args.lora_dropout, profiler=prof)
    return prof.result or {"note": "the profiled steps did not run"}


def kinds_text(p: dict) -> str:
    """A profile's kernel-time shares, largest first: "matmul 61%, attention 18%, ..."."""
    shares = sorted((p.get("kernel_pct_by_kind") or {}).items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {v:.0f}%" for k, v in shares)


def profile_line(name: str, p: dict) -> str:
    if "gpu_busy_ms_per_step" not in p:
        return f"{name:<40} {p.get('wall_ms_per_step', 0):8.1f} ms/step; {p.get('note', '')}"
    kinds = kinds_text(p)
    return (f"{name:<40} {p.get('wall_ms_per_step', 0):8.1f} ms/step, GPU busy {p.get('gpu_busy_ms_per_step', 0):8.1f} ms "
            f"(idle {p.get('gpu_idle_pct')}%), {p.get('kernels_per_step', 0):.0f} kernels/step; {kinds}"
            + host_text(p))


def host_text(p: dict, top: int = 6) -> str:
    """The host ops with the most self time per step, when the profile recorded them."""
    ops = (p.get("top_host_ops") or [])[:top]
    if not ops:
        return ""
    return (f"\n    host {p.get('host_self_ms_per_step')} ms/step in ops; most: "
            + ", ".join(f"{o['name']} {o['self_ms_per_step']:.1f} ms ({o['calls_per_step']:.0f}x)" for o in ops))


# -----------------------------------------------------------------------------------------
# Output
# -----------------------------------------------------------------------------------------

COLUMNS = [("config", 40), ("tok/s", 8), ("samp/s", 7), ("x base", 6), ("alloc", 6), ("resv", 6), ("MFU%", 5),
           ("HFU%", 5), ("tok/step", 8), ("samples", 18)]


def target_state(t: dict) -> str:
    """met by CONFIGS / not met / baseline not run (a target with no baseline in the run)."""
    if t["met_by"]:
        if t.get("baseline_repeated") is False:  # files before this field: no remark
            return "met by " + ", ".join(t["met_by"]) + " (against the baseline's first run only: not repeated)"
        return "met by " + ", ".join(t["met_by"])
    return "not met" if t.get("measured", True) else "baseline not run"


def markdown(payload: dict) -> str:
    """The results of a fast_path.json as the Markdown tables docs/performance.md carries."""
    env = payload.get("environment") or {}
    lines = [f"{env.get('device', '?')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}, liger-kernel {env.get('liger-kernel')}, flash-attn {env.get('flash-attn')}", "",
             "| config | tokens/s | × baseline | samples/s | peak alloc GiB | peak reserved GiB | MFU % | HFU % | timed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in payload.get("results") or []:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | {r.get('status')} | | | | | | | |")
            continue
        lines.append("| " + " | ".join([
            r["name"], fmt(r.get("tokens_per_s"), ",.0f"), fmt(r.get("x_baseline"), ".2f"), fmt(r.get("samples_per_s"), ".2f"),
            fmt(r.get("peak_alloc_gib"), ".1f"), fmt(r.get("peak_reserved_gib"), ".1f"), fmt(r.get("mfu_pct"), ".0f"),
            fmt(r.get("hfu_pct"), ".0f"),
            f"{r['timed_steps']} steps, {r['timed_tokens']:,} tokens, {r.get('same_samples', '')}"]) + " |")
    check = payload.get("loss_check") or {}
    if check.get("status") == "ok":
        lines += ["", f"Loss agreement: {check['steps']} steps of {check['config']} vs the baseline, largest relative "
                  f"difference {check['max_rel_diff']:.2e}, mean {check['mean_rel_diff']:.2e} (tolerance {check['rtol']:g}): "
                  f"{'agree' if check.get('agree') else 'DISAGREE'}."]
    for name, rep in (payload.get("baseline_repeats") or {}).items():
        lines.append(f"- {name} again after the other configs: {rep['tokens_per_s']:,.0f} tokens/s, "
                     f"{rep['drift_pct']:+.1f} % against its first run (how far the host drifted within this run)")
    for t in payload.get("targets") or []:
        lines.append(f"- target {t['target']}: {target_state(t)}")
    profiles = payload.get("profiles") or {}
    if profiles:
        lines += ["", "| profiled config | wall ms/step | GPU busy ms/step | GPU idle % | kernels/step | kernel time by kind |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, p in profiles.items():
            kinds = kinds_text(p)
            lines.append(f"| {name} | {p.get('wall_ms_per_step', '')} | {p.get('gpu_busy_ms_per_step', '')} | "
                         f"{p.get('gpu_idle_pct', '')} | {p.get('kernels_per_step', '')} | {kinds or p.get('status') or p.get('note', '')} |")
    return "\n".join(lines)


def header() -> str:
    return "  ".join(name.ljust(w) if i == 0 else name.rjust(w) for i, (name, w) in enumerate(COLUMNS))


def fmt(v, spec) -> str:
    return "-" if v is None else format(v, spec)


def line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['name']:<40}  {r['status']}"
    vals = [r["name"], fmt(r.get("tokens_per_s"), ",.0f"), fmt(r.get("samples_per_s"), ".2f"),
            fmt(r.get("x_baseline"), ".2f"), fmt(r.get("peak_alloc_gib"), ".1f"), fmt(r.get("peak_reserved_gib"), ".1f"),
            fmt(r.get("mfu_pct"), ".0f"), fmt(r.get("hfu_pct"), ".0f"), fmt(r.get("tokens_per_step"), ",.0f"),
            r.get("same_samples", "")]
    text = "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, (_, w)) in enumerate(zip(vals, COLUMNS)))
    if r.get("compile_graph_breaks"):  # a compiled config that does not run as one graph per layer
        text += f"  [{r['compile_graph_breaks']} graph breaks: {'; '.join(r.get('compile_graph_break_reasons', []))}]"
    if r.get("compile_recompile_reasons"):  # guards that failed: each failure compiled the layer again
        text += f"  [recompiled on: {'; '.join(r['compile_recompile_reasons'])}; {r.get('compile_frames')} frames]"
    return text


def environment() -> dict:
    import importlib.metadata as md

    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
    for pkg in ("transformers", "peft", "accelerate", "liger-kernel", "triton", "flash-attn"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env


def write_json(path: Path | None, payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


def targets(results: list[dict], repeats: dict | None = None) -> list[dict]:
    """Each target's verdict. A config must beat the fastest reading of its family's baseline
    in the run: every baseline entry of ``results`` (``--configs`` may name it more than once)
    and its repeat (``repeats``, by baseline name). A first run may have paid one-off costs (on
    one H200, cuDNN attention plans every new length once, 1.4x on a first row) that a config
    run later in the process no longer pays, and the host-bound batch-1 baseline drifts within
    a process. Without a repeat the verdict says so."""
    verdicts = []
    for label, family, fast_enough, memory_ok in TARGETS:
        name = f"{family}/baseline"
        readings = [r for r in results if r["name"] == name and r["status"] == "ok" and r.get("tokens_per_s")]
        base = readings[0] if readings else None
        again = (repeats or {}).get(name, {}).get("tokens_per_s")
        best = max([r["tokens_per_s"] for r in readings] + [again or 0]) if base is not None else None
        met = [r["name"] for r in results
               if base is not None and r["status"] == "ok" and r["name"] != name
               and r["name"].startswith(family + "/") and r.get("tokens_per_s")
               and fast_enough(r["tokens_per_s"] / best)
               and r.get("peak_alloc_gib") is not None and memory_ok(r["peak_alloc_gib"], base["peak_alloc_gib"])]
        verdicts.append({"target": label, "met_by": sorted(set(met), key=met.index), "measured": base is not None,
                         "baseline_repeated": again is not None or len(readings) > 1,
                         "baseline_best_tokens_per_s": best})
    return verdicts


# -----------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="default", help="comma-separated names, 'default' or 'all' (see --list)")
    p.add_argument("--list", action="store_true", help="print the configs and exit")
    p.add_argument("--steps", type=int, default=24, help="timed steps of a one-sample-per-step config")
    p.add_argument("--warmup", type=int, default=4, help="warm-up steps of a one-sample-per-step config")
    p.add_argument("--packed-tokens", type=int, default=160_000,
                   help="timed-token budget of a packed config (its timed steps = budget / row size)")
    p.add_argument("--packed-warmup", type=int, default=2, help="warm-up steps of a packed config")
    p.add_argument("--sample-max", type=int, default=2048, help="samples are cut to their first N tokens")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout of every LoRA config (the seed's)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--model", default="qwen-7b-chat", help="preset of the 7b (LoRA) family")
    p.add_argument("--full-model", default="qwen-1_8b-chat", help="preset of the 1.8b (full fine-tuning) family")
    p.add_argument("--check-loss", action="store_true", help="first run the 50-step loss-agreement check")
    p.add_argument("--check-config", default="7b/lora+liger+offload", help="the fast path the check compares")
    p.add_argument("--check-steps", type=int, default=50)
    p.add_argument("--check-dropout", type=float, default=0.0,
                   help="LoRA dropout in the check (0: compare the math, not dropout masks)")
    p.add_argument("--check-rtol", type=float, default=1e-2, help="largest per-step relative loss difference allowed")
    p.add_argument("--time-limit", type=float, default=420.0,
                   help="start no further config once this many seconds have passed")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--no-repeat-baseline", dest="repeat_baseline", action="store_false",
                   help="do not measure each baseline again after the other configs (drift within the run)")
    p.add_argument("--render", type=Path, default=None, help="print a fast_path.json as Markdown tables and exit")
    p.add_argument("--profile", default="", help="comma-separated configs to profile after the speed table "
                   "(a separate short run each: where the step time goes, by kernel kind)")
    p.add_argument("--profile-steps", type=int, default=3, help="profiled steps per --profile config")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes for a plumbing check: tiny presets, 64-token samples, 3+1 steps (on a CPU: liger left out)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.full_model, args.sample_max = "tiny-qwen2", "tiny-qwen2", 64
        args.steps, args.warmup, args.packed_warmup, args.packed_tokens = 3, 1, 1, 1024
        args.check_steps = 4
    return args


def smoke_config(c: Config, cuda: bool) -> Config:
    """A config as the tiny smoke shapes can run it: at most 2 of the tiny presets' 4 layers
    left out of checkpointing, and without a GPU no liger (its kernels need CUDA; the smoke
    run then exercises the other switches only)."""
    settings = dict(c.settings)
    if "uncheckpointed_layers" in settings:
        settings["uncheckpointed_layers"] = min(settings["uncheckpointed_layers"], 2)
    if cuda:
        return replace(c, settings=settings)
    return replace(c, plugins=[p for p in c.plugins if p != "liger"],
                   options={k: v for k, v in c.options.items() if k != "liger"}, settings=settings)


def select(spec: str) -> list[Config]:
    if spec == "default":
        return [c for c in CONFIGS if c.default]
    if spec == "all":
        return list(CONFIGS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown config(s): {', '.join(unknown)} (see --list)")
    return [BY_NAME[n] for n in names]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    if args.list:
        for c in CONFIGS:
            print(f"{c.name:<42} {'default' if c.default else 'opt-in':8} {c.note}")
        return 0
    chosen = select(args.configs)
    if args.smoke:
        chosen = [smoke_config(c, cuda=torch.cuda.is_available()) for c in chosen]
        BY_NAME.update({c.name: c for c in chosen})
    started = time.perf_counter()
    out_path = Path(os.environ["OUT"]) / "fast_path.json" if os.environ.get("OUT") else None

    from tunerkit.models.presets import get_preset
    from tunerkit.plugins import registry

    fams = {"7b": Family(args.model, "lora"), "1.8b": Family(args.full_model, "full")}
    shapes = {k: Shape.of(get_preset(f.model)) for k, f in fams.items()}
    vocab = get_preset(args.model).vocab
    if get_preset(args.full_model).vocab != vocab:
        raise SystemExit("both families must share a vocabulary (the samples are token ids)")
    samples = make_samples(vocab, args.seed, args.sample_max)
    order = loader_order(len(samples), args.seed)
    expected = [token_hash(samples[i]["input_ids"]) for i in order]  # what a one-sample step trains, in order
    all_hashes = set(expected)
    env = environment()
    plugins = registry()
    print(f"fast path bench: {env['device']}, torch {env['torch']}, transformers {env['transformers']}, "
          f"peft {env['peft']}, liger-kernel {env['liger-kernel']}", flush=True)
    print(f"samples: {len(samples)} from {SPEC} (seed {args.seed}), cut at {args.sample_max} tokens, mean "
          f"{np.mean([len(s['input_ids']) for s in samples]):.0f}; plugins found: "
          f"{', '.join(sorted(n for n, c in plugins.items() if not getattr(c, 'load_error', None)))}", flush=True)
    payload = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "peak_tflops": PEAK_TFLOPS,
               "results": [], "loss_check": None, "targets": None}

    def save() -> None:  # after every part, so a run cut by its time limit keeps what it measured
        write_json(out_path, payload)
        write_json(args.json, payload)

    if args.check_loss:
        payload["loss_check"] = check_loss(args, fams, samples, order)
        save()

    print("\n" + header(), flush=True)
    results: list[dict] = payload["results"]
    for cfg in chosen:
        if time.perf_counter() - started > args.time_limit:
            r = {"name": cfg.name, "status": f"skipped: past --time-limit {args.time_limit:.0f} s"}
            results.append(r)
            print(line(r), flush=True)
            continue
        fam = fams[cfg.family]
        missing = [p for p in cfg.plugins if p not in plugins or getattr(plugins[p], "load_error", None)]
        t0 = time.perf_counter()
        r = {"name": cfg.name, "plugins": cfg.plugins, "model": fam.model,
             "tokens_per_row": row_tokens(cfg, args) if cfg.pack_factor else None}
        if missing:
            r["status"] = f"skipped: plugin(s) not available: {', '.join(missing)}"
        else:
            if cfg.pack_factor:
                warmup = args.packed_warmup
                steps = max(2, math.ceil(args.packed_tokens / row_tokens(cfg, args)))
            else:
                warmup, steps = args.warmup, args.steps
            try:
                if cfg.baseline:
                    raw = run_baseline(fam, args, samples, order, steps, warmup, args.lora_dropout)
                else:
                    raw = run_tunerkit(cfg, fam, args, samples, steps, warmup, args.lora_dropout)
                r.update({k: v for k, v in raw.items() if k not in ("hashes", "lengths", "step_seconds")})
                r.update(summarise(raw, shapes[cfg.family], fam.trained))
                base = next((b for b in results if b["name"] == f"{cfg.family}/baseline" and b["status"] == "ok"), None)
                r["same_samples"] = same_samples(raw, expected, all_hashes, batch_one=not cfg.pack_factor)
                if cfg.baseline:
                    r["x_baseline"] = 1.0
                if base is not None and r.get("tokens_per_s") and base.get("tokens_per_s"):
                    r["x_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]
            except torch.OutOfMemoryError:
                r["status"] = "OOM"
            except Exception as err:  # noqa: BLE001 - one failed config must not end the run
                r["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
                if os.environ.get("FAST_PATH_TRACEBACK"):
                    traceback.print_exc()
            if "status" not in r:
                r["status"] = "ok"
            free_memory()
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        print(line(r), flush=True)
        payload["targets"] = targets(results)
        save()

    if args.repeat_baseline:
        # A batch-1 baseline waits on the host for part of every step, so its speed follows the
        # host's CPU: measuring it again at the end shows how far that moved within this run.
        payload["baseline_repeats"] = {}
        firsts = {}  # the first ok entry of each baseline (--configs may name one more than once)
        for r in results:
            if r["name"].endswith("/baseline") and r["status"] == "ok":
                firsts.setdefault(r["name"], r)
        for first in firsts.values():
            if time.perf_counter() - started > args.time_limit:
                print(f"{first['name']} again: skipped: past --time-limit {args.time_limit:.0f} s", flush=True)
                continue
            family = first["name"].split("/")[0]
            try:
                raw = run_baseline(fams[family], args, samples, order, args.steps, args.warmup, args.lora_dropout)
                again = summarise(raw, shapes[family], fams[family].trained)
            except Exception as err:  # noqa: BLE001 - the repeat must not end the run
                print(f"{first['name']} again: failed: {type(err).__name__}: {err}", flush=True)
                continue
            finally:
                free_memory()
            rep = {"tokens_per_s": again["tokens_per_s"],
                   "drift_pct": 100.0 * (again["tokens_per_s"] / first["tokens_per_s"] - 1.0)}
            payload["baseline_repeats"][first["name"]] = rep
            print(f"{first['name']} again: {rep['tokens_per_s']:,.0f} tokens/s ({rep['drift_pct']:+.1f} % against "
                  "its first run)", flush=True)
        payload["targets"] = targets(results, payload["baseline_repeats"])
        save()

    if args.profile:
        payload["profiles"] = {}
        print("\n== where the time goes (torch.profiler, separate runs; kinds are by kernel name) ==", flush=True)
        for cfg in select(args.profile):
            if time.perf_counter() - started > args.time_limit:
                print(f"{cfg.name:<40} skipped: past --time-limit {args.time_limit:.0f} s", flush=True)
                continue
            try:
                prof = profile_config(cfg, fams[cfg.family], args, samples, order)
            except Exception as err:  # noqa: BLE001 - a failed profile must not end the run
                prof = {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"}
            free_memory()
            payload["profiles"][cfg.name] = prof
            print(profile_line(cfg.name, prof) if "status" not in prof else f"{cfg.name:<40} {prof['status']}",
                  flush=True)
            save()

    print("\nsamples/s and tokens/s count real (unpadded) samples and tokens of the timed steps; alloc/resv: "
          "peak GiB allocated/reserved over the whole config (weights included); MFU/HFU: % of "
          f"{PEAK_TFLOPS:.0f} TFLOP/s, HFU with the recompute of gradient checkpointing.", flush=True)
    for v in payload["targets"] or []:
        print(f"target {v['target']}: {target_state(v)}", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
