"""adalora: SVD-shaped LoRA whose rank budget is pruned to ``target_r`` during training.

PEFT's AdaLoraConfig with ms-swift's settings, plus what only a training loop can do:

- ``total_step`` must be the real number of optimizer steps, which the loop knows only
  after the data is tokenized (after ``apply_tuner``). The config is built with a
  placeholder and set in ``on_train_begin``; PEFT's rank allocator holds the same config
  object, so the budget schedule sees the real value.
- ``update_and_allocate`` must run after every optimizer step, while the gradients still
  exist (``on_step_end``: after ``optimizer.step()``, before ``zero_grad()``).
- PEFT adds the orthogonality regulariser to the loss of every micro-batch; it is scaled
  by 1 / micro-batches per step so it weighs ``orth_reg_weight`` per optimizer step
  whatever the gradient accumulation, as in ms-swift's benchmark.
- The reported train loss is PEFT's, regulariser included (as ms-swift's); the task loss
  alone is reported beside it (``train_loss_plain``): the regulariser is read once per
  optimizer step (the weights do not change within one) and taken off each step's loss.

Steps are numbered from 1 (the number of optimizer steps done, counting this one, like
HF Trainer's ``state.global_step`` at step end): the last step is then
``total_step - tfinal``, where PEFT fixes the final rank pattern at exactly ``target_r``
per matrix on average (Zhang et al. 2023, https://arxiv.org/abs/2303.10512).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tunerkit import hookimpl, option
from tunerkit.errors import RowFailed
from tunerkit.targets import resolve_targets
from tunerkit_plugins._helpers import estimates
from tunerkit_plugins.tuners.lora import LoRA


@dataclass
class AdaLoRAOptions:
    target_r: int = option(8, "average rank per adapted matrix after pruning", min=1)
    init_r: int = option(12, "rank every adapted matrix starts with", min=1)
    tinit: int = option(0, "optimizer steps before pruning starts", min=0)
    tfinal: int = option(0, "optimizer steps at the end with the final ranks fixed", min=0)
    deltaT: int = option(1, "steps between two budget allocations", min=1)
    beta1: float = option(0.85, "EMA factor of the sensitivity", gt=0, lt=1)
    beta2: float = option(0.85, "EMA factor of the uncertainty", gt=0, lt=1)
    orth_reg_weight: float = option(0.5, "weight of the orthogonality regulariser on P and Q", min=0)
    alpha: float = option(32.0, "scaling numerator, as LoRA's", gt=0)
    dropout: float = option(0.05, "dropout on the adapter's input", min=0, lt=1)
    targets: str | list[str] = option("DEFAULT", "DEFAULT (the family's q,k,v), ALL (every linear but the head), or module names")

    def __post_init__(self):
        if self.target_r > self.init_r:
            raise ValueError(f"need target_r <= init_r, got target_r={self.target_r}, init_r={self.init_r}")


def _budget_phase_error(o: AdaLoRAOptions, total_steps: int) -> str | None:
    if o.tinit >= total_steps - o.tfinal:
        return (f"adalora: tinit={o.tinit} and tfinal={o.tfinal} leave no pruning phase in "
                f"{total_steps} optimizer steps (need tinit < steps - tfinal)")
    return None


@torch.no_grad()
def orth_regulariser(model, adapter: str) -> float:
    """What PEFT's AdaLoraModel.forward multiplies by orth_reg_weight and adds to the loss: the
    mean Frobenius distance of P P^T and Q^T Q from the identity over the adapted matrices.
    PEFT computes it inline in forward and returns only the sum, so it is read again here."""
    total, count = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name and p.numel():
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total += float(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)))
            count += 1
    return total / count if count else 0.0


class AdaLoRA(LoRA):
    name = "adalora"
    conformance = {"settings": {"max_steps": 3}}
    summary = "AdaLoRA (PEFT): SVD adapters, rank budget pruned from init_r to target_r"
    extra_per_rank = 1  # the singular values E of each adapted linear
    Options = AdaLoRAOptions

    def peft_config_kwargs(self, ctx) -> dict:
        o = self.options
        preset = getattr(ctx.model_source, "preset", None)
        # Placeholder until on_train_begin knows the real step count; max_steps is the best early guess.
        placeholder = max(ctx.settings.max_steps or 0, o.tinit + o.tfinal + 1)
        return dict(target_r=o.target_r, init_r=o.init_r, tinit=o.tinit, tfinal=o.tfinal, deltaT=o.deltaT,
                    beta1=o.beta1, beta2=o.beta2, orth_reg_weight=o.orth_reg_weight, total_step=placeholder,
                    lora_alpha=o.alpha, lora_dropout=o.dropout,
                    target_modules=resolve_targets(o.targets, ctx.model, preset), task_type="CAUSAL_LM")

    def peft_config(self, ctx):
        from peft import AdaLoraConfig

        return AdaLoraConfig(**self.peft_config_kwargs(ctx))

    @staticmethod
    def adalora_model(ctx):
        """The AdaLoraModel inside the (possibly DDP-wrapped) PeftModel."""
        return ctx.unwrapped_model().base_model

    @staticmethod
    def adalora_config(ctx):
        model = AdaLoRA.adalora_model(ctx)
        return model.peft_config[model.trainable_adapter_name]

    @hookimpl
    def apply_tuner(self, ctx):
        super().apply_tuner(ctx)
        # PEFT creates each layer's ``ranknum`` (the constant rank divisor) frozen, but re-wraps it as a
        # new, trainable Parameter when it moves the adapter to the base layer's dtype or device (a bf16
        # or GPU model): AdamW would then change the divisor. It is a constant: keep it frozen.
        for name, p in ctx.model.named_parameters():
            if ".ranknum." in name:
                p.requires_grad_(False)

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        super().estimate_memory(row, shape, estimate)
        estimates.rank_allocation(estimate, shape, len(self.adapted_names(row, shape)))

    @hookimpl
    def validate(self, row):
        if row.settings.max_steps:
            return _budget_phase_error(self.options, row.settings.max_steps)
        return None

    @hookimpl
    def on_train_begin(self, ctx):
        self.reg_curve: list[float] = []  # orth_reg_weight x regulariser, per optimizer step
        reason = _budget_phase_error(self.options, ctx.total_steps)
        if reason:
            raise RowFailed(reason)
        # The allocator holds the same config object today; set both so a copy in a later PEFT still sees it.
        self.adalora_config(ctx).total_step = ctx.total_steps
        self.adalora_model(ctx).rankallocator.set_total_step(ctx.total_steps)

    @hookimpl
    def on_step_begin(self, ctx):
        # PEFT adds orth_reg_weight * regulariser to the loss of every forward pass, i.e. once per
        # micro-batch, while the core's loss is already normalised over the whole accumulation window:
        # unscaled, the regulariser would weigh window_size times more than ms-swift's (HF Trainer
        # divided the summed loss by the accumulation steps). Scale it to one weight per optimizer step.
        self.adalora_config(ctx).orth_reg_weight = self.options.orth_reg_weight / max(ctx.window_size, 1)
        model = self.adalora_model(ctx)
        self.reg_curve.append(self.options.orth_reg_weight * orth_regulariser(model.model, model.trainable_adapter_name))

    @hookimpl
    def on_train_end(self, ctx):
        self.adalora_config(ctx).orth_reg_weight = self.options.orth_reg_weight  # as saved with the adapter

    @hookimpl
    def on_step_end(self, ctx):
        self.adalora_model(ctx).update_and_allocate(ctx.global_step + 1)

    @hookimpl
    def collect_metrics(self, ctx):
        model = self.adalora_model(ctx)
        allocator = model.rankallocator
        pattern = self.adalora_config(ctx).rank_pattern
        # rank_pattern: per adapted matrix, which singular triplets survive; none yet = nothing pruned.
        final = sum(sum(keep) for keep in pattern.values()) if pattern else allocator.init_bgt
        return {**self.loss_parts(ctx), "lora_targets": str(self.peft_config_kwargs(ctx)["target_modules"]),
                "adalora_total_step": self.adalora_config(ctx).total_step,
                "adalora_init_budget": allocator.init_bgt, "adalora_target_budget": allocator.target_bgt,
                "adalora_rank_budget": final,
                "adalora_mean_rank": final / max(len(allocator.name_set), 1)}

    def loss_parts(self, ctx) -> dict:
        """The train loss without the regulariser, over the same last steps as the core's train_loss."""
        losses = ctx.metrics.get("train_loss_curve") or []
        reg = getattr(self, "reg_curve", [])[:len(losses)]
        if not losses or len(reg) != len(losses):
            return {}
        plain = [loss - r for loss, r in zip(losses, reg)]
        tail = max(1, len(plain) // 10)
        return {"train_loss_plain": float(np.mean(plain[-tail:])), "train_loss_plain_curve": plain,
                "adalora_orth_reg_curve": reg, "adalora_orth_reg": float(np.mean(reg[-tail:]))}
