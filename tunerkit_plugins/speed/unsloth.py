"""unsloth: the model loaded and LoRA-wrapped through unsloth's FastLanguageModel.

unsloth replaces the architecture's attention, MLP and norm forwards with its own Triton
kernels, fuses the LoRA matmuls into them (when dropout is 0 and adapters carry no bias)
and checkpoints every layer with its own offloaded checkpointing (``"unsloth"``: each
layer's input waits in host memory until the backward needs it). This plugin makes it a
row beside ``lora`` in any recipe: ms-swift's "unsloth" row (4-bit base, ``bits = 4``) or
bf16 (``bits = 16``), counted by tunerkit's own loop and accounting like every other row.

It is its own tuner (the ``tuner`` slot): the adapters come from unsloth's
``get_peft_model``, so it replaces ``lora`` instead of going beside it. Gradient
checkpointing follows the row's ``gradient_checkpointing``: on, unsloth's own (offloaded
when ``offload_checkpointing``) takes the place of the core's. unsloth needs a CUDA GPU;
:meth:`Unsloth.validate` refuses the row on any other machine.

A bf16 preset (random weights) is handed to unsloth as a checkpoint directory holding the
preset's config, a small token-id tokenizer and one stored tensor: transformers draws the
missing weights itself on the GPU, so the row never writes or reads the full model. A 4-bit
preset row reads the preset's full random checkpoint (written once to the cache), because
bitsandbytes quantizes only the weights a checkpoint stores; a 4-bit row whose loaded model
holds no 4-bit layer fails instead of measuring bf16 weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed

INSTALL_HINT = "pip install 'tunerkit[unsloth]'"


@dataclass
class UnslothOptions:
    rank: int = option(8, "LoRA rank r")
    alpha: float = option(32.0, "LoRA alpha: the update is scaled by alpha / r", gt=0)
    dropout: float = option(0.05, "dropout on the adapter's input (unsloth fuses its LoRA kernels only at 0)")
    targets: str | list[str] = option("DEFAULT", "DEFAULT (the family's q,k,v), ALL (every linear but the head), or module names")
    bits: int = option(4, "base weights: 4 (bitsandbytes NF4 through unsloth, ms-swift's row) or 16 (the row's dtype)")
    offload_checkpointing: bool = option(
        True, "with gradient_checkpointing on: unsloth's offloaded checkpointing (layer inputs in host memory)")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.bits not in (4, 16):
            raise ValueError(f"bits must be 4 or 16, got {self.bits}")


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def unsloth_targets(targets, preset=None) -> list[str]:
    """unsloth takes module names only: ms-swift's DEFAULT/ALL keywords spelled out."""
    if isinstance(targets, list):
        return targets
    if targets == "ALL":
        return list(ALL_LINEAR)
    if targets == "DEFAULT":
        return list(preset.default_targets) if preset is not None else ["q_proj", "k_proj", "v_proj"]
    return [targets]


def checkpointing_mode(gradient_checkpointing: bool, offload: bool):
    """unsloth's ``use_gradient_checkpointing`` for the row's setting and the option."""
    if not gradient_checkpointing:
        return False
    return "unsloth" if offload else True


def preset_directory(preset, target: Path) -> Path:
    """The checkpoint directory unsloth loads a bf16 preset from: config, tokenizer, and the final
    norm's weight as the one stored tensor (transformers initialises every missing weight).
    Published in one rename, so a killed write never leaves a folder that looks complete."""
    from safetensors.torch import save_file

    from tunerkit.models.loading import ids_tokenizer, publish

    if (target / "config.json").exists():
        return target

    def write(folder: Path):
        preset.config().save_pretrained(folder)
        ids_tokenizer(preset.vocab).save_pretrained(folder)
        save_file({"model.norm.weight": torch.ones(preset.hidden)}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})

    return publish(target, write, ".unsloth-")


def checkpoint_with_tokenizer(checkpoint: Path, vocab: int, target: Path) -> Path:
    """``checkpoint`` (a preset's full random checkpoint, shared by every quantizing loader) as a
    folder unsloth can read: links to its files beside a stand-in tokenizer over plain ids, which
    unsloth's loader requires. The shared folder itself is never written into; this one is
    published in one rename."""
    from tunerkit.models.loading import ids_tokenizer, publish

    if (target / "tokenizer_config.json").exists():
        return target

    def write(folder: Path):
        for item in checkpoint.iterdir():
            (folder / item.name).symlink_to(item.resolve())
        ids_tokenizer(vocab).save_pretrained(folder)

    return publish(target, write, ".unsloth-")


def quantized_linears(model) -> int:
    """Layers whose weight bitsandbytes holds in 4 bits (a ``quant_state`` beside the packed bytes)."""
    return sum(getattr(getattr(m, "weight", None), "quant_state", None) is not None for m in model.modules())


class Unsloth(Plugin):
    name = "unsloth"
    summary = "unsloth's FastLanguageModel: its kernels, fused LoRA and offloaded checkpointing (CUDA; 4-bit or bf16)"
    Options = UnslothOptions
    slot = "tuner"
    conflicts = {"bnb": "unsloth quantizes the base itself: set bits = 4 in [plugins.unsloth]",
                 "liger": "unsloth brings its own kernels", "compile": "unsloth compiles its own kernels",
                 "offload": "unsloth offloads its own checkpoints (offload_checkpointing)",
                 "deepspeed": "unsloth trains on one GPU"}

    @hookimpl
    def validate(self, row):
        if not torch.cuda.is_available():
            return "unsloth's kernels need a CUDA GPU and none is visible; run this row on a GPU machine or drop it"
        if importlib.util.find_spec("unsloth") is None:
            return f"unsloth is not installed ({INSTALL_HINT})"
        return None

    @hookimpl
    def weight_bits(self, row):
        return 4 + 32 / 64 if self.options.bits == 4 else None  # NF4 blocks of 64 with an fp32 scale each

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        from tunerkit_plugins._helpers import estimates

        names = estimates.target_names(self.options.targets, shape)
        estimates.low_rank_adapters(estimate, shape, names, self.options.rank, self.options.dropout)
        if row.settings.gradient_checkpointing and self.options.offload_checkpointing:
            estimates.offloaded_checkpoints(estimate, in_flight=1)
        # unsloth computes a training loss in chunks and never holds tokens x vocabulary logits:
        # the llama3-8b 4-bit row on one H100 peaked at 5.96 GiB, 2.9 GiB under a whole-logits
        # prediction (128,256 logits a token); docs/performance.md
        estimates.fused_loss(estimate, shape)
        # unsloth's attention does not plan per input shape as cuDNN's does: its llama3-8b 4-bit
        # row's steps, each meeting 16 new lengths, took 2.5-3.0 s, under the 16 plans alone
        # plus the step's matmuls at the device's full rate (docs/performance.md)
        estimate.shape_plans = False

    def source_path(self, ctx) -> str:
        from tunerkit.models.loading import cache_dir, model_path, preset_checkpoint

        source = ctx.model_source
        if source.kind != "preset":
            return model_path(source)
        if self.options.bits == 4:
            # bitsandbytes quantizes the weights it reads from the checkpoint; weights that
            # transformers draws for a missing tensor stay bf16 (a 4-bit row of the 8B preset
            # so ran at bf16 memory). A 4-bit preset row reads the preset's full checkpoint.
            checkpoint = preset_checkpoint(source.preset, ctx.dtype)
            return str(checkpoint_with_tokenizer(checkpoint, source.preset.vocab,
                                                 cache_dir() / "models" / f"unsloth-{checkpoint.name}"))
        return str(preset_directory(source.preset, cache_dir() / "models" / f"unsloth-{source.preset.name}"))

    @hookimpl
    def load_model(self, ctx):
        if ctx.device.type != "cuda":
            raise RowFailed(f"unsloth needs a CUDA GPU (this row runs on {ctx.device.type})")
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=self.source_path(ctx), max_seq_length=ctx.settings.max_length, dtype=ctx.dtype,
            load_in_4bit=self.options.bits == 4, local_files_only=ctx.model_source.kind != "hub")
        ctx.state["unsloth:tokenizer"] = tokenizer
        ctx.attention_used = "unsloth"
        quantized = quantized_linears(model)
        if self.options.bits == 4 and quantized == 0:
            raise RowFailed("unsloth: 4-bit weights asked for, but no layer of the loaded model holds "
                            "bitsandbytes 4-bit weights (the row would measure bf16 weights)")
        ctx.state["unsloth:quantized_linears"] = quantized
        return model

    @hookimpl
    def apply_tuner(self, ctx):
        from unsloth import FastLanguageModel

        o, s = self.options, ctx.settings
        mode = checkpointing_mode(s.gradient_checkpointing, o.offload_checkpointing)
        model = FastLanguageModel.get_peft_model(
            ctx.model, r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout, bias="none",
            target_modules=unsloth_targets(o.targets, getattr(ctx.model_source, "preset", None)),
            use_gradient_checkpointing=mode, random_state=s.seed, max_seq_length=s.max_length)
        # unsloth has set up its own checkpointing: the core's call that follows (the row's
        # gradient_checkpointing) must not replace it with transformers' plain one.
        for name in ("gradient_checkpointing_enable", "activation_checkpointing_enable"):
            object.__setattr__(model, name, lambda *args, **kwargs: None)
        ctx.state["unsloth:checkpointing"] = str(mode)
        ctx.model = model

    @hookimpl
    def collect_metrics(self, ctx):
        return {"unsloth_bits": self.options.bits, "unsloth_checkpointing": ctx.state.get("unsloth:checkpointing"),
                "quantized_linears": ctx.state.get("unsloth:quantized_linears"),
                "unsloth_targets": str(unsloth_targets(self.options.targets,
                                                       getattr(ctx.model_source, "preset", None)))}
