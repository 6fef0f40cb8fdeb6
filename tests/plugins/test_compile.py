"""compile: regional torch.compile of the decoder layers changes speed, not the numbers."""

from __future__ import annotations

import pytest
import torch

from tunerkit import hookimpl
from tunerkit_plugins.speed.compile import decoder_layers

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
    assert not ctx.close()
    assert torch._dynamo.config.recompile_limit == before


def test_checkpointed_layers_get_their_forward_compiled_and_teardown_restores_the_call(tiny_row, tiny_context):
    import functools

    from tunerkit_plugins.speed.compile import checkpointed_inside_forward

    ctx = tiny_context(tiny_row("lora", "compile", **ROW))
    layers = decoder_layers(ctx.unwrapped_model())
    if checkpointed_inside_forward(layers[0]) is None:
        pytest.skip("this transformers checkpoints in the layer's __call__: layer.compile() covers it")
    originals = []
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        originals.append(layer._gradient_checkpointing_func)
    ctx.hook.on_train_begin(ctx=ctx)
    assert all(layer._compiled_call_impl is None for layer in layers)  # the layer call itself stays eager
    assert all(layer._gradient_checkpointing_func is not o for layer, o in zip(layers, originals))
    assert not ctx.close()
    assert all(layer._gradient_checkpointing_func is o for layer, o in zip(layers, originals))


def test_graph_breaks_are_counted_with_their_reason(tiny_row, run_tiny):
    """On a CPU packed rows take the per-sample SDPA fallback, which reads the sample bounds
    (``cu.tolist()``) inside the layer: a data-dependent graph break the metrics must show."""
    row = {**ROW, "max_length": 64}
    m = run_tiny(tiny_row("lora", "packing", "compile", name="packed", compile={"backend": "aot_eager"}, **row))
    assert m["compile_graph_breaks"] >= 1
    assert any("data dependent" in r.lower() for r in m["compile_graph_break_reasons"]), m["compile_graph_break_reasons"]


def test_compile_with_offload_keeps_the_checkpoint_wrappers_out_of_the_graph(tiny_row, run_tiny):
    """Where transformers checkpoints inside forward, offload's saved-tensor hooks would sit in
    the compiled region and break its graph: the plugin compiles the checkpointed forward
    instead, so the compiled row has no break, offloads, and trains exactly as eager."""
    from transformers import AutoModelForCausalLM

    from tunerkit.models.presets import get_preset
    from tunerkit_plugins.speed.compile import checkpointed_inside_forward, decoder_layers

    layer = decoder_layers(AutoModelForCausalLM.from_config(get_preset("tiny-llama").config()))[0]
    inside = checkpointed_inside_forward(layer) is not None
    row = {**ROW, "batch_size": 1, "offload": {"min_bytes": 0}}  # tiny activations: offload them all
    eager = run_tiny(tiny_row("lora", "offload", name="eager", **row))
    compiled = run_tiny(tiny_row("lora", "compile", "offload", name="compiled", compile={"backend": "aot_eager"}, **row))
    assert compiled["compile_placement"] == ("checkpointed forward" if inside else "layer")
    assert compiled["compile_graph_breaks"] == 0, compiled["compile_graph_break_reasons"]
    assert compiled["compile_graphs"] >= 1
    assert compiled["offload_tensors_per_step"] > 0
    assert compiled["train_loss_curve"] == pytest.approx(eager["train_loss_curve"], rel=1e-4, abs=1e-5)


def test_compiled_checkpoint_wrap_swaps_only_the_layer_forward(monkeypatch):
    import functools

    from tunerkit_plugins.speed.compile import compiling_checkpoint

    def forward(self, x, scale=1):
        return ("eager", self, x, scale)

    def compiled(self, x, scale=1):
        return ("compiled", self, x, scale)

    calls = []

    def checkpoint(fn, *args, **kwargs):
        calls.append(kwargs)
        return fn(*args)

    wrapped = compiling_checkpoint(forward, compiled)(checkpoint)
    assert wrapped(functools.partial(forward, "layer", scale=2), 3, use_reentrant=False) == ("compiled", "layer", 3, 2)
    assert calls == [{"use_reentrant": False}]  # the checkpoint call keeps its own arguments
    assert wrapped(lambda x: ("other", x), 5) == ("other", 5)  # any other function passes through


def test_recompiles_are_recorded_with_the_guard_that_failed(tiny_row, run_tiny):
    """Padding-free rows change length every step. Compiled with static shapes each new
    length recompiles the layer, and the metrics name the failed size guard; with the
    default symbolic lengths no length guard fails."""
    row = {**ROW, "max_steps": 3, "max_train_samples": 6, "compile": {"backend": "aot_eager", "dynamic": False}}
    static = run_tiny(tiny_row("lora", "padding_free", "compile", name="static", **row))
    assert any("size mismatch" in r for r in static["compile_recompile_reasons"]), \
        static["compile_recompile_reasons"]
    torch._dynamo.reset()
    row["compile"] = {"backend": "aot_eager", "dynamic": True}
    dynamic = run_tiny(tiny_row("lora", "padding_free", "compile", name="dynamic", **row))
    assert not any("size mismatch" in r for r in dynamic["compile_recompile_reasons"]), \
        dynamic["compile_recompile_reasons"]
    assert dynamic["compile_frames"] < static["compile_frames"]


def test_a_first_length_equal_to_the_hidden_size_does_not_pin_the_length(tiny_row, tiny_context):
    """Dynamo gives input sizes equal at the first trace one symbol (duck shaping). A first
    batch of exactly hidden_size tokens would share the hidden size's symbol, which the
    weights pin, and the next length would recompile. The plugin turns duck shaping off for
    its row, and teardown turns it back."""
    from tunerkit_plugins.speed.compile import dynamo_counts, recompile_reasons, shape_config

    before_row = shape_config().use_duck_shape
    ctx = tiny_context(tiny_row("lora", "compile", **{**ROW, "compile": {"backend": "aot_eager"}}))
    ctx.hook.on_train_begin(ctx=ctx)
    assert shape_config().use_duck_shape is False
    model = ctx.unwrapped_model()
    hidden = model.config.hidden_size
    counts = dynamo_counts()
    with torch.no_grad():
        for length in (hidden, hidden - 1, hidden - 3):
            model(input_ids=torch.randint(0, model.config.vocab_size, (1, length)))
    assert not any("size mismatch" in r for r in recompile_reasons(counts["guard_failures"]))
    assert not ctx.close()
    assert shape_config().use_duck_shape == before_row


def test_resolving_the_varlen_kernel_traces_without_a_graph_break():
    """Attention resolves its kernel on every call, inside the compiled layers: the lookup
    must be plain Python on values probed at import (a traced import that fails is a graph
    break, one per layer call on a GPU host without flash-attn)."""
    from tunerkit_plugins.data.varlen_attention import resolve_kernel

    def attend(x):
        kernel = resolve_kernel("auto", torch.device("cuda"), torch.bfloat16)
        return x * len(kernel)

    out = torch.compile(attend, backend="eager", fullgraph=True)(torch.ones(2))
    assert out.tolist() == [float(len(resolve_kernel("auto", torch.device("cuda"), torch.bfloat16)))] * 2


def test_layers_left_out_of_checkpointing_are_compiled_whole_and_train_as_eager(tiny_row, run_tiny):
    """``uncheckpointed_layers``: the layers without a checkpoint call are compiled through
    ``layer.compile()``, the others as before; no graph break, eager's losses."""
    row = {**ROW, "batch_size": 1, "uncheckpointed_layers": 2, "offload": {"min_bytes": 0}}
    eager = run_tiny(tiny_row("lora", "offload", name="eager", **row))
    compiled = run_tiny(tiny_row("lora", "compile", "offload", name="compiled", compile={"backend": "aot_eager"},
                                 **row))
    assert compiled["uncheckpointed_layer_indices"] == [1, 3]
    assert compiled["compiled_layers"] == 4
    assert compiled["compile_graph_breaks"] == 0, compiled["compile_graph_break_reasons"]
    assert compiled["train_loss_curve"] == pytest.approx(eager["train_loss_curve"], rel=1e-4, abs=1e-5)


def test_compile_places_each_layer_by_whether_it_is_still_checkpointed(tiny_row, tiny_context):
    from tunerkit.checkpointing import enable_gradient_checkpointing, leave_layers_unchecked
    from tunerkit_plugins.speed.compile import checkpointed_inside_forward

    ctx = tiny_context(tiny_row("lora", "compile", **ROW))
    enable_gradient_checkpointing(ctx.model)
    left_out = leave_layers_unchecked(ctx.model, 2)
    layers = decoder_layers(ctx.unwrapped_model())
    ctx.hook.on_train_begin(ctx=ctx)
    try:
        inside = checkpointed_inside_forward(layers[0]) is not None
        for i, layer in enumerate(layers):
            # a checkpointed layer's forward is compiled inside its checkpoint call where
            # transformers checkpoints inside forward; every other layer is compiled whole
            whole = i in left_out or not inside
            assert (layer._compiled_call_impl is not None) == whole, (i, left_out, inside)
    finally:
        assert not ctx.close()


class SeeGuardStance:
    """Records, after each step, whether dynamo skips the guards that do not tell graphs apart."""

    def __init__(self):
        self.skipping: list[bool] = []

    @hookimpl
    def on_step_end(self, ctx):
        import torch._dynamo.eval_frame as eval_frame

        self.skipping.append(bool(eval_frame._stance.skip_guard_eval_unsafe))


def test_skip_guard_eval_starts_after_the_warm_up_trains_the_same_and_is_undone(tiny_row, tmp_path):
    from tunerkit.loop import run_row

    row = dict(ROW, max_steps=4, timing_warmup_steps=2)
    plain = run_row(tiny_row("lora", "compile", name="guarded", compile={"backend": "aot_eager"}, **row),
                    tmp_path / "guarded")
    torch._dynamo.reset()
    spy = SeeGuardStance()
    skipped = run_row(tiny_row("lora", "compile", name="skipped",
                               compile={"backend": "aot_eager", "skip_guard_eval": True}, **row),
                      tmp_path / "skipped", extra_plugins=[spy])
    assert spy.skipping == [False, False, True, True]  # compiled and guarded through the warm-up
    assert skipped["compile_guards_skipped_from_step"] == 3
    assert skipped["train_loss_curve"] == pytest.approx(plain["train_loss_curve"], rel=1e-5, abs=1e-6)
    import torch._dynamo.eval_frame as eval_frame

    assert eval_frame._stance.skip_guard_eval_unsafe is False


def test_cpp_wrapper_is_inductors_setting_for_the_row_only(tiny_row, tiny_context):
    import torch._inductor.config as inductor_config

    before = inductor_config.cpp_wrapper
    ctx = tiny_context(tiny_row("lora", "compile", compile={"cpp_wrapper": True}, **ROW))
    ctx.hook.on_train_begin(ctx=ctx)
    assert inductor_config.cpp_wrapper is True
    assert not ctx.close()
    assert inductor_config.cpp_wrapper is before
