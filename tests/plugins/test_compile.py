"""compile: regional torch.compile of the decoder layers changes speed, not the numbers."""

from __future__ import annotations

import pytest
import torch

from tunerkit_plugins.compile import decoder_layers

# Dropout 0: compiled dropout draws its masks from another generator than eager.
# Gradient checkpointing on, as in every speed row: the recompute runs the compiled layer again.
ROW = dict(lora={"rank": 4, "dropout": 0.0}, max_steps=2, batch_size=2, max_train_samples=4, max_length=48,
           evaluate=[], gradient_checkpointing=True)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_loss_equals_eager(tiny_row, run_tiny):
    eager = run_tiny(tiny_row("lora", name="eager", **ROW))
    compiled = run_tiny(tiny_row("lora", "compile", name="compiled", **ROW))
    assert compiled["compiled_layers"] == 4  # every decoder layer of tiny-llama
    # one code object for every layer, traced once, without a graph break
    assert compiled["compile_frames"] >= 1 and compiled["compile_graphs"] >= 1
    assert compiled["compile_graph_breaks"] == 0 and compiled["compile_graph_break_reasons"] == []
    assert compiled["train_loss_curve"] == pytest.approx(eager["train_loss_curve"], rel=1e-4, abs=1e-5)


def test_compile_wraps_every_decoder_layer_and_teardown_restores_limit(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "compile", **ROW))
    before = torch._dynamo.config.recompile_limit
    ctx.hook.on_train_begin(ctx=ctx)
    layers = decoder_layers(ctx.unwrapped_model())
    assert len(layers) == 4 and all(layer._compiled_call_impl is not None for layer in layers)
    ctx.hook.teardown(ctx=ctx)
    assert torch._dynamo.config.recompile_limit == before


def test_graph_breaks_are_counted_with_their_reason(tiny_row, run_tiny):
    """On a CPU packed rows take the per-sample SDPA fallback, which reads the sample bounds
    (``cu.tolist()``) inside the layer: a data-dependent graph break the metrics must show."""
    row = {**ROW, "max_length": 64}
    m = run_tiny(tiny_row("lora", "packing", "compile", name="packed", compile={"backend": "aot_eager"}, **row))
    assert m["compile_graph_breaks"] >= 1
    assert any("data dependent" in r.lower() for r in m["compile_graph_break_reasons"]), m["compile_graph_break_reasons"]
