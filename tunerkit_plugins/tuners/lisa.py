"""lisa: full fine-tuning that trains only a few randomly chosen decoder layers at a time.

LISA (Pan et al. 2024, "Layerwise Importance Sampling for Memory-Efficient Large Language
Model Fine-Tuning", arXiv:2403.17919): every decoder layer is frozen except
``activated_layers`` drawn at random, re-drawn every ``step_interval`` optimizer steps; the
embeddings, the output head and the final norm train all the time. The draws come from the
row's seed, so every run of a row trains the same layers at the same steps.

Memory follows the active set only because a switch really lets go of the layers that
leave it: their optimizer state is dropped and their gradients set to ``None``; layers that
join start with fresh state. The optimizer is built over every parameter (states are created
lazily, on a parameter's first gradient), so no optimizer has to be rebuilt.

docs/tuners/lisa.md has the memory arithmetic, and why the always-trained embeddings and
head dominate it on a 150k-token vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from torch import nn

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed, UserError
from tunerkit_plugins._helpers.layers import decoder_stack
from tunerkit_plugins._helpers.optimizer_state import state_gib
from tunerkit_plugins._helpers import estimates


@dataclass
class LISAOptions:
    activated_layers: int = option(2, "decoder layers that train at the same time (ms-swift's benchmark page: 2 or 4)", min=1)
    step_interval: int = option(20, "optimizer steps between two draws of the active layers", min=1)
    train_embeddings: bool = option(
        True, "the input embedding trains all the time (as in ms-swift); false saves its gradient and optimizer state"
              " and lets backward stop at the lowest active layer")
    train_head: bool = option(True, "the output head trains all the time (as in ms-swift); false saves its gradient and optimizer state")


def _set_trainable(module: nn.Module, trainable: bool, optimizer) -> None:
    """Freeze (dropping gradients and optimizer state) or unfreeze (with fresh state) ``module``."""
    for p in module.parameters():
        p.requires_grad_(trainable)
        p.grad = None
        if optimizer is not None:
            # Joining layers must not inherit a stale state either; torch optimizers create it lazily.
            optimizer.state.pop(p, None)


class LISA(Plugin):
    name = "lisa"
    conformance = {"companions": ["full"]}
    summary = "LISA: full fine-tuning of a few random decoder layers at a time, re-drawn every step_interval steps"
    Options = LISAOptions
    requires = ("full",)
    # GaLore builds per-parameter projections over a fixed trainable set; ZeRO partitions it up front.
    conflicts = ("galore", "deepspeed")

    def __init__(self, options=None):
        super().__init__(options)
        self.layers: list[nn.Module] = []
        self.active: list[int] = []
        #: (global step, active layer indices) of every draw
        self.history: list[tuple[int, list[int]]] = []
        self.rng: random.Random | None = None

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        o = self.options
        estimates.some_layers(estimate, shape, o.activated_layers, o.train_embeddings, o.train_head)

    @hookimpl
    def validate(self, row):
        if row.settings.gpus > 1:
            return ("lisa changes which layers train during the run, which data-parallel gradient buckets"
                    " cannot follow; use gpus = 1")
        return None

    @hookimpl
    def on_train_begin(self, ctx):
        if ctx.world_size > 1:
            raise RowFailed("lisa runs on one process only (the trainable set changes during training)")
        o = self.options
        model = ctx.unwrapped_model()
        owner, attr = decoder_stack(model)
        self.layers = list(getattr(owner, attr))
        if o.activated_layers > len(self.layers):
            raise UserError(f"activated_layers={o.activated_layers} but the model has {len(self.layers)} decoder layers",
                            key="lisa.activated_layers", hint=f"use at most {len(self.layers)}")
        self.rng = random.Random(ctx.settings.seed)
        for layer in self.layers:
            _set_trainable(layer, False, ctx.optimizer)
        embed, head = model.get_input_embeddings(), model.get_output_embeddings()
        tied = head is not None and head.weight is embed.weight
        if not o.train_embeddings and tied and o.train_head:
            ctx.log("lisa: the embedding is tied to the head and train_head is on, so it keeps training")
        elif not o.train_embeddings:
            _set_trainable(embed, False, ctx.optimizer)
            # The core makes the embedding output require grad for checkpointing; non-reentrant
            # checkpointing does not need it, and without it backward stops at the lowest active layer.
            if hasattr(model, "disable_input_require_grads"):
                model.disable_input_require_grads()
        if not o.train_head and head is not None:
            _set_trainable(head, False, ctx.optimizer)

    @hookimpl
    def on_step_begin(self, ctx):
        if ctx.global_step % self.options.step_interval == 0:
            self.switch(ctx.global_step, ctx.optimizer)

    def switch(self, step: int, optimizer) -> None:
        """Draw the next active layers; release the leaving ones, start the joining ones fresh."""
        chosen = sorted(self.rng.sample(range(len(self.layers)), self.options.activated_layers))
        for i in set(self.active) - set(chosen):
            _set_trainable(self.layers[i], False, optimizer)
        for i in set(chosen) - set(self.active):
            _set_trainable(self.layers[i], True, optimizer)
        self.active = chosen
        self.history.append((step, chosen))

    @hookimpl
    def collect_metrics(self, ctx):
        model = ctx.unwrapped_model()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        layer_params = sum(p.numel() for p in self.layers[0].parameters()) if self.layers else 0
        return {
            # the core counted every parameter (all of them may train at some point); report the active set
            "trainable_params": trainable,
            "trainable_params_m": trainable / 1e6,
            "trainable_pct": 100.0 * trainable / max(total, 1),
            "lisa_activated_layers": self.options.activated_layers,
            "lisa_step_interval": self.options.step_interval,
            "lisa_layer_params_m": layer_params / 1e6,
            "lisa_switches": len(self.history),
            "lisa_active_layers": list(self.active),
            "lisa_layer_history": [[step, layers] for step, layers in self.history],
            "lisa_optimizer_state_gib": state_gib(dict(ctx.optimizer.state)) if ctx.optimizer is not None else None,
        }
