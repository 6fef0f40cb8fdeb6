"""dora: magnitude vector = the loaded base weight's row norms; output unchanged at init."""

import torch

from .modelside_helpers import fresh_base, lora_layers, logits, sample_ids

PREFIX = "base_model.model."


def test_magnitude_is_loaded_weight_norm_and_output_is_unchanged(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("dora", dora={"targets": "ALL"}))
    base = fresh_base()
    layers = lora_layers(ctx.model)
    assert len(layers) == 4 * 7  # every linear of every layer, not the head
    for name, module in layers:
        magnitude = module.lora_magnitude_vector["default"].weight
        loaded = base.get_submodule(name.removeprefix(PREFIX)).weight
        # PEFT keeps nn.Linear's [out, in] layout: the paper's column norms are row norms here.
        assert magnitude.shape == (loaded.shape[0],)
        torch.testing.assert_close(magnitude, loaded.norm(p=2, dim=1))
        assert magnitude.requires_grad
    ids = sample_ids()
    torch.testing.assert_close(logits(ctx.model, ids), logits(base, ids), rtol=0, atol=1e-5)
