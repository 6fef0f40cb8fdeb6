"""lisa: switches at the interval, only the active layers get gradients, state follows the active set."""

from __future__ import annotations

import pytest
import torch

from tunerkit.errors import UserError

VOCAB = 49152  # tiny-llama


def token_batch(seed: int, rows: int = 2, length: int = 12) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, VOCAB, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def started(tiny_row, tiny_context, steps: int, checkpointing: bool = False, **lisa):
    """A tiny lisa context with the core's optimizer, after on_train_begin, plus its LISA instance."""
    from accelerate import Accelerator

    from tunerkit.checkpointing import enable_gradient_checkpointing

    ctx = tiny_context(tiny_row("full", "lisa", lisa=lisa, max_steps=steps))
    if checkpointing:
        enable_gradient_checkpointing(ctx.model)  # as the loop does, before on_train_begin
    ctx.model.train()
    ctx.accelerator = Accelerator(cpu=True)
    ctx.total_steps = steps
    ctx.optimizer = ctx.hook.make_optimizer(ctx=ctx, groups=ctx.hook.param_groups(ctx=ctx))
    ctx.scheduler = ctx.hook.make_scheduler(ctx=ctx)
    ctx.hook.on_train_begin(ctx=ctx)
    plugin = next(i.plugin for i in ctx.hook.on_step_begin.get_hookimpls() if i.plugin_name == "lisa")
    return ctx, plugin


def step_recording_grads(ctx, seed: int) -> set[str]:
    """One real loop step (tunerkit.loop.train_step); returns the names of parameters that got a gradient."""
    from tunerkit.loop import train_step

    got: set[str] = set()
    zero_grad = ctx.optimizer.zero_grad

    def record_then_zero(*args, **kwargs):  # the loop zeroes gradients right after the step
        got.update(n for n, p in ctx.model.named_parameters() if p.grad is not None)
        zero_grad(*args, **kwargs)

    ctx.optimizer.zero_grad = record_then_zero
    try:
        train_step(ctx, [token_batch(seed)])
    finally:
        ctx.optimizer.zero_grad = zero_grad
    ctx.global_step += 1
    return got


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def state_numel(optimizer) -> int:
    return sum(t.numel() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def test_switches_at_the_interval_and_only_active_layers_train(tiny_row, tiny_context):
    ctx, lisa = started(tiny_row, tiny_context, steps=7, activated_layers=2, step_interval=3)
    always = {n for n, _ in ctx.model.named_parameters() if layer_of(n) is None}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= always
    names = dict(ctx.model.named_parameters())
    sizes = []
    for step in range(7):
        got = step_recording_grads(ctx, step)
        active = set(lisa.active)
        assert len(active) == 2
        assert {n for n in got if layer_of(n) is not None} == {n for n in names if layer_of(n) in active}
        assert always <= got  # embeddings, head and final norm train at every step
        trainable = {n for n, p in names.items() if p.requires_grad}
        assert trainable == always | {n for n in names if layer_of(n) in active}
        # the optimizer holds state for the trainable parameters and nothing else
        with_state = {n for n, p in names.items() if ctx.optimizer.state.get(p)}
        assert with_state == trainable
        sizes.append(state_numel(ctx.optimizer))
    assert [s for s, _ in lisa.history] == [0, 3, 6]
    assert len(set(sizes)) == 1  # state released on every switch: memory does not grow
    assert all(len(layers) == 2 and layers == sorted(layers) for _, layers in lisa.history)


def test_draws_follow_the_seed(tiny_row, tiny_context):
    draws = []
    for _ in range(2):
        _, lisa = started(tiny_row, tiny_context, steps=1, activated_layers=2, step_interval=1)
        for step in range(6):
            lisa.switch(step, optimizer=None)
        draws.append([layers for _, layers in lisa.history])
    assert draws[0] == draws[1]
    assert len({tuple(d) for d in draws[0]}) > 1  # the active set really changes


def test_frozen_embeddings_and_head_hold_no_state(tiny_row, tiny_context):
    # with the core's (non-reentrant) checkpointing, which no longer needs the embedding output to require grad
    ctx, lisa = started(tiny_row, tiny_context, steps=1, checkpointing=True, activated_layers=1, step_interval=5,
                        train_embeddings=False, train_head=False)
    assert not getattr(ctx.model, "_require_grads_hooks", None)
    got = step_recording_grads(ctx, 0)
    assert "model.embed_tokens.weight" not in got and "lm_head.weight" not in got
    assert not ctx.optimizer.state.get(ctx.model.model.embed_tokens.weight)
    assert not ctx.optimizer.state.get(ctx.model.lm_head.weight)
    (active,) = lisa.active
    assert {layer_of(n) for n in got if layer_of(n) is not None} == {active}


def test_too_many_active_layers_is_a_user_error(tiny_row, tiny_context):
    with pytest.raises(UserError, match="activated_layers=5 but the model has 4"):
        started(tiny_row, tiny_context, steps=1, activated_layers=5)


def test_lisa_row_reports_the_active_parameter_count(tiny_row, run_tiny):
    m = run_tiny(tiny_row("full", "lisa", lisa={"activated_layers": 2, "step_interval": 1}, max_steps=3,
                          batch_size=2, max_train_samples=8))
    assert m["optimizer_steps"] == 3
    assert m["lisa_switches"] == 3 and [s for s, _ in m["lisa_layer_history"]] == [0, 1, 2]
    layer = round(m["lisa_layer_params_m"] * 1e6)
    assert m["trainable_params"] == m["total_params"] - 2 * layer  # 4 layers, 2 active
    assert m["trainable_pct"] == pytest.approx(100 * m["trainable_params"] / m["total_params"])
    assert m["lisa_optimizer_state_gib"] > 0


def test_bad_rows_fail_early(tiny_row):
    from tunerkit.validation import validate_row

    with pytest.raises(UserError, match="needs 'full'"):
        tiny_row("lisa")
    with pytest.raises(UserError, match=r"activated_layers: 0 is out of range \(hint: allowed: >= 1\)"):
        tiny_row("full", "lisa", lisa={"activated_layers": 0})
    with pytest.raises(UserError, match="gpus = 1") as err:
        validate_row(tiny_row("full", "lisa", gpus=2), file="t.toml")
    assert "\n" not in str(err.value)
    validate_row(tiny_row("full", "lisa"), file="t.toml")


def test_a_tied_embedding_follows_train_head(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("full", "lisa", lisa={"train_embeddings": False}, max_steps=1))
    model = ctx.model
    model.lm_head.weight = model.model.embed_tokens.weight  # tie them, as SmolLM2 does
    ctx.optimizer = None
    ctx.hook.on_train_begin(ctx=ctx)
    assert model.model.embed_tokens.weight.requires_grad  # the head trains, so the shared tensor does
