"""adapter: bottleneck after each MLP; only it trains; saved weights reload to identical outputs."""

import json
import math

import torch

from .modelside_helpers import fresh_base, logits, sample_ids


def test_trainable_params_are_the_bottlenecks(tiny_row, tiny_context):
    dim = 128
    ctx = tiny_context(tiny_row("adapter"))
    cfg = ctx.model.config
    trainable = {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    assert sum(p.numel() for p in trainable.values()) == layers * (2 * hidden * dim + dim + hidden)
    assert all(".mlp.adapter." in n for n in trainable)
    # Base weights keep their checkpoint names.
    assert "model.layers.0.mlp.down_proj.weight" in dict(ctx.model.named_parameters())
    down = ctx.model.model.layers[0].mlp.adapter.down
    assert down.weight.abs().max() <= math.sqrt(6 / (hidden + dim))  # Xavier-uniform bound
    assert 0 < down.bias.abs().max() < 1e-4  # normal(std 1e-6)


def test_output_passes_through_the_adapter(tiny_row, tiny_context):
    ids, base = sample_ids(), logits(fresh_base(), sample_ids())
    seed_init = tiny_context(tiny_row("adapter", adapter={"dim": 16}))
    assert not torch.allclose(logits(seed_init.model, ids), base)  # ms-swift's init moves the output
    zero_up = tiny_context(tiny_row("adapter", adapter={"dim": 16, "zero_init_up": True}))
    torch.testing.assert_close(logits(zero_up.model, ids), base)  # up = 0: the base model's output
    assert zero_up.model.model.layers[0].mlp.adapter.down.weight.abs().sum() > 0  # still trainable


def test_saved_adapter_loads_into_a_fresh_model(tiny_row, tiny_context, tmp_path):
    from tunerkit_plugins.tuners.adapter import load_adapter

    ctx = tiny_context(tiny_row("adapter", adapter={"dim": 16}))
    out = tmp_path / "row"
    ctx.hook.save_artifacts(ctx=ctx, out_dir=out)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["dim"] == 16 and config["base_model"] == "tiny-llama"
    restored = load_adapter(fresh_base(), out / "adapter")
    ids = sample_ids()
    assert torch.equal(logits(restored, ids), logits(ctx.model, ids))
