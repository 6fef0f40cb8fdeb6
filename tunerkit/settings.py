"""The core settings of one row: everything that is not a plugin option.

Defaults follow ms-swift's benchmark page where it states one (batch 1, grad-accum 16,
max_length 2048, gradient checkpointing and flash attention on, samples over max_length
deleted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunerkit.options import option


#: Names of torch's SDPA kernels a row may restrict attention to (torch.nn.attention.SDPBackend).
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


@dataclass
class Settings:
    # --- model -----------------------------------------------------------------
    model: str = option("smollm2-135m-instruct",
                        "a preset name (tunerkit list), a local HF directory, or a hub id")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = option(
        "auto", "weights' dtype; auto = bf16 on GPU, fp32 on CPU")
    attention: Literal["flash", "sdpa", "eager"] = option(
        "flash", "flash = the flash_attn package if importable, else torch's fused SDPA kernels")
    sdpa_kernels: list[str] | None = option(
        None, "SDPA kernels allowed, in order of preference: flash, efficient, cudnn, math (None = torch's choice)")
    gradient_checkpointing: bool = option(True, "recompute activations in backward (non-reentrant)")
    uncheckpointed_layers: int = option(
        0, "decoder layers (evenly spread) left out of gradient checkpointing: each keeps its activations "
           "instead of being rerun in the backward", added_later=True, min=0)
    tf32: bool = option(False, "TF32 tensor cores for fp32 matmuls (on GPU: LoRA's fp32 adapter weights); "
                                "10-bit mantissa, as HF's tf32 argument", added_later=True)
    autocast: bool = option(False, "run the forward under torch.autocast (HF's bf16/fp16 argument): fp32 weights "
                                   "(PEFT's adapters) stay fp32 masters, their matmuls run in the row's 16-bit dtype "
                                   "(bf16 where the weights are fp32)", added_later=True)
    speed: Literal["plain", "max"] = option(
        "plain", "max = the fast mode: every speed switch the row can take joins it (compile, fused loss, "
                 "offload, packing, autocast); the ones it cannot take are recorded with the reason", added_later=True)
    memory_budget_gib: float | None = option(
        None, "with speed = max: GiB of peak allocated memory the row must fit (tunerkit estimate picks "
              "checkpointing and offload to fit)", added_later=True, gt=0)
    overlap_steps: bool = option(False, "no host-GPU synchronisation between optimizer steps: pinned, non-blocking "
                                        "batch copies, step times from CUDA events, losses read one step late",
                                 added_later=True)
    allocator: Literal["default", "expandable"] = option(
        "default", "CUDA caching allocator: default, or expandable (segments grow in place, as "
                   "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True; less reserved beyond allocated). Every CUDA "
                   "row records whether its segments were expandable and any allocator variable in effect "
                   "(a library can set one on import)",
        added_later=True)
    isolation: Literal["auto", "process", "none"] = option(
        "auto", "process = train the row in a fresh process, so it carries no memory, compiled code or kernel "
                "plans from the rows before it; none = in the runner's process; auto = process on a CUDA device "
                "in a single-process run, none elsewhere", added_later=True)
    chat_template: str | None = option(
        None, "named fallback template when the tokenizer has none: chatml, llama3, plain")
    system: str | None = option(None, "system prompt put before every conversation")

    # --- data --------------------------------------------------------------------
    dataset: str = option("builtin:arithmetic", "a registry name, a local file, builtin:* or synthetic:*")
    mix: dict | None = option(None, "{ dataset = ..., ratio = r }: append int(len(train) * r) general rows")
    eval_dataset: str | None = option(None, "held-out data; default: val_size rows split off dataset")
    val_size: int = option(0, "rows split off the training data for eval loss (ms-swift's Tuners table: 5000)", min=0)
    max_train_samples: int | None = option(None, "cap on training rows after splitting (None = all)", min=1)
    max_length: int = option(2048, "longest sample in tokens", min=1)
    truncation_strategy: Literal["delete", "truncation_left", "truncation_right"] = option(
        "delete", "what happens to samples over max_length: ms-swift deleted them")
    train_on_prompt: bool = option(False, "also compute loss on user/system tokens (default: assistant only)")

    # --- optimisation ------------------------------------------------------------
    batch_size: int = option(1, "micro-batch size per device", min=1)
    gradient_accumulation_steps: int = option(16, "micro-batches per optimizer step", min=1)
    learning_rate: float = option(1e-4, "peak learning rate", gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = option(
        "cosine", "transformers scheduler name")
    warmup_ratio: float = option(0.03, "fraction of optimizer steps spent warming the learning rate up", min=0, lt=1)
    weight_decay: float = option(0.01, "decoupled weight decay (not on biases and norms)", min=0)
    max_grad_norm: float = option(1.0, "gradient clipping; 0 disables", min=0)
    epochs: float = option(1.0, "passes over the training data", gt=0)
    max_steps: int | None = option(None, "stop after this many optimizer steps (overrides epochs)", min=1)
    token_budget: int | None = option(None, "stop once this many real tokens were trained (bench profiles)", min=1)
    seed: int = option(42, "one seed for init, sample order and plugins: every row sees the same samples", min=0, max=2**32 - 1)

    # --- measurement -------------------------------------------------------------
    timing_warmup_steps: int = option(1, "optimizer steps left out of the throughput figures", min=0)
    evaluate: list[str] = option(["eval_loss"],
                                 "what to measure after training: eval_loss, accuracy, infer_speed, gsm8k, arc, ceval")
    eval_steps: int | None = option(None, "also measure eval loss every N optimizer steps", min=1)
    eval_batch_size: int = option(4, "batch size for eval loss", min=1)
    eval_data_dir: str | None = option(None, "folder with gsm8k/arc/ceval files in their public schemas")
    eval_limit: int | None = option(None, "items per accuracy task (None = all)", min=1)
    eval_fewshot: int = option(0, "few-shot examples per accuracy prompt", min=0)
    max_new_tokens: int = option(16, "generation length for accuracy tasks", min=1)
    infer_backend: Literal["eager", "static", "compiled"] = option(
        "eager", "generation backend for infer_speed: eager dynamic cache (ms-swift's), static cache, compiled")
    infer_prompts: int = option(4, "prompts timed for infer_speed (after one warm-up)", min=1)
    infer_new_tokens: int = option(64, "new tokens per infer_speed prompt", min=1)

    # --- run ---------------------------------------------------------------------
    train: bool = option(True, "false = evaluate the loaded model only (a reference row like ms-swift's *-eval)")
    gpus: int = option(1, "GPUs this row runs on (tunerkit launches itself when > 1)", min=1)
    repeats: int = option(1, "how many times the row is measured", min=1)
    save: bool = option(False, "write artifacts (adapters, checkpoints) under the run folder")

    def __post_init__(self):
        # Single-value ranges live in each field's option(...); these checks span fields or lists.
        if self.sdpa_kernels is not None:
            unknown = [k for k in self.sdpa_kernels if k not in SDPA_KERNELS]
            if unknown or not self.sdpa_kernels:
                raise ValueError(f"sdpa_kernels must be a non-empty list of {', '.join(SDPA_KERNELS)}; got {self.sdpa_kernels}")
        if self.uncheckpointed_layers and not self.gradient_checkpointing:
            raise ValueError("uncheckpointed_layers leaves layers out of gradient checkpointing: "
                             "set gradient_checkpointing = true")
        if self.mix == {}:
            self.mix = None  # `mix = {}` in a profile switches mixing off (TOML has no null)
        if self.mix is not None:
            unknown = set(self.mix) - {"dataset", "ratio"}
            if unknown or not isinstance(self.mix.get("dataset"), str):
                raise ValueError("mix must be { dataset = \"...\", ratio = r }")
            ratio = self.mix.get("ratio", 1.0)
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < float("inf"):
                raise ValueError(f"mix.ratio must be a number > 0 (general rows per training row), got {ratio!r}")
