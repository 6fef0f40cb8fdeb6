"""full: fine-tune every parameter of the model."""

from __future__ import annotations

from tunerkit import Plugin, hookimpl
from tunerkit_plugins._helpers import estimates


class Full(Plugin):
    name = "full"
    summary = "full fine-tuning: every parameter trains"
    slot = "tuner"

    @hookimpl
    def apply_tuner(self, ctx):
        for p in ctx.model.parameters():
            p.requires_grad_(True)

    @hookimpl
    def estimate_memory(self, row, shape, estimate):
        estimates.every_weight(estimate, shape)
