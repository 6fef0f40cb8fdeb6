"""neftune: uniform noise on the input embeddings while training (NEFTune).

In training mode only, every embedding output of shape (batch, L, d) gets noise drawn
uniformly from ±alpha/sqrt(L*d); eval and generation see clean embeddings. The hook is
transformers' own ``neftune_post_forward_hook`` (the one HF Trainer installs for
``neftune_noise_alpha``); the row's context removes it after the row (``ctx.on_teardown``), so nothing stays hooked.
L is the padded length of the batch, as in transformers and ms-swift
(Jain et al. 2023, https://arxiv.org/abs/2310.05914).

Fills no slot: it composes with any tuner (``plugins = ["lora", "neftune"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunerkit import Plugin, hookimpl, option


@dataclass
class NEFTuneOptions:
    alpha: float = option(15.0, "noise scale: uniform in ±alpha/sqrt(seq_len * hidden)", min=0)


def _hook_function():
    try:
        from transformers.integrations.neftune import neftune_post_forward_hook
    except ImportError:  # older transformers kept it beside the Trainer
        from transformers.trainer_utils import neftune_post_forward_hook
    return neftune_post_forward_hook


class NEFTune(Plugin):
    name = "neftune"
    conformance = {"companions": ["lora"]}
    summary = "NEFTune: uniform noise ±alpha/sqrt(L*d) on input embeddings in training mode"
    Options = NEFTuneOptions

    @hookimpl
    def modify_model(self, ctx):
        # The embedding module is shared with any PEFT wrapper applied later, so hooking it here holds.
        embeddings = ctx.model.get_input_embeddings()
        ctx.patch(embeddings, "neftune_noise_alpha", self.options.alpha)
        ctx.on_teardown(embeddings.register_forward_hook(_hook_function()).remove, "neftune forward hook")

    @hookimpl
    def collect_metrics(self, ctx):
        return {"neftune_alpha": self.options.alpha}
