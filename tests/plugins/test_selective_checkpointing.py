"""selective_checkpointing: the same training as plain checkpointing, without recomputing the matmuls."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tunerkit.errors import UserError
from tunerkit.validation import validate_row
from tunerkit_plugins.speed.selective_checkpointing import MATMUL_OPS, SelectiveCheckpointing, is_attention

ROW = dict(lora={"rank": 4, "dropout": 0.0}, max_steps=3, batch_size=2, max_train_samples=6, max_length=64,
           evaluate=[])


class CountOps(TorchDispatchMode):
    """Counts matmul and attention ops dispatched while active (the backward's recompute included)."""

    def __init__(self):
        super().__init__()
        self.matmuls = 0
        self.attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        self.matmuls += name in MATMUL_OPS
        self.attention += is_attention(name)
        return func(*args, **(kwargs or {}))


def backward_ops(tiny_row, tiny_context, plugins, checkpointing, tuner="full", **options):
    """(matmuls, attention ops) the backward of one step runs, the loss and the gradients it gives."""
    from tunerkit.checkpointing import enable_gradient_checkpointing

    table = dict(ROW) if tuner == "lora" else {k: v for k, v in ROW.items() if k != "lora"}
    row = tiny_row(tuner, *plugins, gradient_checkpointing=checkpointing, attention="sdpa", **options, **table)
    ctx = tiny_context(row)
    if checkpointing:
        enable_gradient_checkpointing(ctx.model)
    ctx.model.train()
    ctx.hook.on_train_begin(ctx=ctx)
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (2, 24))
    loss = ctx.model(input_ids=ids, labels=ids).loss
    with CountOps() as counted:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
    assert not ctx.close()
    return counted, loss.detach(), grads


def test_the_backward_recomputes_no_matmul_and_gives_the_same_gradients(tiny_row, tiny_context):
    plain, plain_loss, plain_grads = backward_ops(tiny_row, tiny_context, [], checkpointing=True)
    none, _, _ = backward_ops(tiny_row, tiny_context, [], checkpointing=False)
    sel, sel_loss, sel_grads = backward_ops(tiny_row, tiny_context, ["selective_checkpointing"], checkpointing=True)
    assert plain.matmuls > none.matmuls  # plain checkpointing reruns every layer's matmuls
    assert sel.matmuls == none.matmuls  # kept outputs: the backward is the no-checkpointing one
    assert sel.attention == none.attention < plain.attention
    assert torch.equal(sel_loss, plain_loss)
    assert sel_grads.keys() == plain_grads.keys() and sel_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(sel_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_with_lora_almost_no_matmul_is_recomputed(tiny_row, tiny_context):
    # With PEFT's LoRA layers a few matmuls of the adapter path (6 of plain checkpointing's 54
    # on tiny-llama) are still recomputed; every base-weight matmul and the attention are kept.
    plain, plain_loss, plain_grads = backward_ops(tiny_row, tiny_context, [], True, tuner="lora")
    none, _, _ = backward_ops(tiny_row, tiny_context, [], False, tuner="lora")
    sel, sel_loss, sel_grads = backward_ops(tiny_row, tiny_context, ["selective_checkpointing"], True, tuner="lora")
    assert 0 <= sel.matmuls - none.matmuls <= (plain.matmuls - none.matmuls) / 4
    assert sel.attention == none.attention
    assert torch.equal(sel_loss, plain_loss)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(sel_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_every_other_matmul_recomputes_about_half(tiny_row, tiny_context):
    plain, _, _ = backward_ops(tiny_row, tiny_context, [], checkpointing=True)
    none, _, _ = backward_ops(tiny_row, tiny_context, [], checkpointing=False)
    half, _, _ = backward_ops(tiny_row, tiny_context, ["selective_checkpointing"], checkpointing=True,
                              selective_checkpointing={"every_other_matmul": True})
    recomputed_plain, recomputed_half = plain.matmuls - none.matmuls, half.matmuls - none.matmuls
    assert 0 < recomputed_half < recomputed_plain
    assert abs(recomputed_half - recomputed_plain / 2) <= recomputed_plain / 4


def test_attention_only_still_recomputes_the_matmuls(tiny_row, tiny_context):
    plain, _, _ = backward_ops(tiny_row, tiny_context, [], checkpointing=True)
    attn, _, _ = backward_ops(tiny_row, tiny_context, ["selective_checkpointing"], checkpointing=True,
                              selective_checkpointing={"save": "attention"})
    assert attn.matmuls == plain.matmuls and attn.attention < plain.attention


def test_trains_like_plain_checkpointing_alone_and_beside_offload(tiny_row, run_tiny):
    plain = run_tiny(tiny_row("lora", name="plain", gradient_checkpointing=True, **ROW))
    sel = run_tiny(tiny_row("lora", "selective_checkpointing", name="selective", gradient_checkpointing=True, **ROW))
    both = run_tiny(tiny_row("lora", "selective_checkpointing", "offload", name="both", gradient_checkpointing=True,
                             offload={"min_bytes": 0}, **ROW))
    assert sel["selective_checkpointing_layers"] == both["selective_checkpointing_layers"] > 0
    assert sel["train_loss_curve"] == pytest.approx(plain["train_loss_curve"], rel=1e-5)
    assert both["train_loss_curve"] == pytest.approx(plain["train_loss_curve"], rel=1e-5)
    assert both["offload_tensors_per_step"] > 0


def test_needs_gradient_checkpointing(tiny_row):
    row = tiny_row("lora", "selective_checkpointing", gradient_checkpointing=False)
    assert "gradient_checkpointing = true" in SelectiveCheckpointing().validate(row)
    with pytest.raises(UserError, match="selective_checkpointing refines gradient checkpointing") as err:
        validate_row(row, file="recipe.toml")
    assert "\n" not in str(err.value)
