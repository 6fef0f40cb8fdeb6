"""rslora scales the LoRA update by alpha/sqrt(r); lora by alpha/r."""

import math

from .modelside_helpers import lora_layers


def scalings(ctx) -> set[float]:
    layers = lora_layers(ctx.model)
    assert layers, "no LoRA layers were created"
    return {m.scaling["default"] for _, m in layers}


def test_rslora_scaling_is_alpha_over_sqrt_rank(tiny_row, tiny_context):
    rank, alpha = 4, 8.0
    lora = tiny_context(tiny_row("lora", lora={"rank": rank, "alpha": alpha}))
    rs = tiny_context(tiny_row("rslora", rslora={"rank": rank, "alpha": alpha}))
    assert scalings(lora) == {alpha / rank}
    assert scalings(rs) == {alpha / math.sqrt(rank)}
    assert rs.model.peft_config["default"].use_rslora is True
    # Same adapters otherwise: same targets, same trainable shapes.
    shapes = lambda ctx: [(n, tuple(p.shape)) for n, p in ctx.model.named_parameters() if p.requires_grad]
    assert shapes(lora) == shapes(rs)
