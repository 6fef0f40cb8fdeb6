"""offload: activations parked in host memory give the same losses and gradients as the plain path."""

from __future__ import annotations

import pytest
import torch

from tunerkit_plugins.speed.offload import HostOffloader

ROW = dict(lora={"rank": 4, "dropout": 0.0}, max_steps=3, batch_size=2, max_train_samples=6, max_length=64,
           evaluate=[])


@pytest.mark.parametrize("checkpointing, scope", [(True, "checkpoints"), (False, "all")])
def test_offloaded_training_matches_plain(tiny_row, run_tiny, checkpointing, scope):
    plain = run_tiny(tiny_row("lora", name="plain", gradient_checkpointing=checkpointing, **ROW))
    moved = run_tiny(tiny_row("lora", "offload", name="offloaded", gradient_checkpointing=checkpointing,
                              offload={"scope": scope, "min_bytes": 0}, **ROW))
    assert moved["offload_scope"] == scope
    assert moved["offload_tensors_per_step"] > 0  # the hooks really packed activations
    assert moved["train_loss_curve"] == pytest.approx(plain["train_loss_curve"], rel=1e-6)


def test_checkpoint_scope_moves_exactly_the_layer_inputs(tiny_row, tiny_context):
    """With checkpointing, one tensor per decoder layer leaves: its input, kept for the recompute."""
    from tunerkit.checkpointing import enable_gradient_checkpointing

    row = tiny_row("lora", "offload", gradient_checkpointing=True, offload={"min_bytes": 0}, **ROW)
    ctx = tiny_context(row)
    enable_gradient_checkpointing(ctx.model)
    ctx.model.train()
    ctx.hook.on_train_begin(ctx=ctx)
    ids = torch.randint(10, 1000, (2, 16))
    batch = {"input_ids": ids, "labels": ids}

    def loss_and_grads(with_plugin: bool):
        ctx.model.zero_grad(set_to_none=True)
        ctx.hook.on_step_begin(ctx=ctx)
        loss = ctx.hook.compute_loss(ctx=ctx, model=ctx.model, batch=batch) if with_plugin else \
            ctx.model(**batch, num_items_in_batch=torch.tensor(ctx.window_label_tokens)).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    ctx.window_label_tokens = 30
    offloaded_loss, offloaded_grads = loss_and_grads(True)
    packed = ctx.hook.collect_metrics(ctx=ctx)
    layers = ctx.model.config.num_hidden_layers
    assert [m for m in packed if m.get("offload_tensors_per_step") is not None][0]["offload_tensors_per_step"] == layers
    assert not ctx.close()  # plain checkpointing again
    plain_loss, plain_grads = loss_and_grads(False)
    assert torch.equal(offloaded_loss, plain_loss)
    assert offloaded_grads.keys() == plain_grads.keys() and offloaded_grads
    for name, grad in plain_grads.items():
        assert torch.equal(offloaded_grads[name], grad), name


def test_weights_and_small_tensors_stay_put():
    layer = torch.nn.Linear(8, 8)
    off = HostOffloader(min_bytes=64)
    off.skip_parameters_of(layer)
    assert off.pack(layer.weight) is layer.weight
    assert off.pack(layer.weight.t()) is not None and off.tensors == 0  # a view of a weight is a weight
    small = torch.ones(4)
    assert off.pack(small) is small
    big = torch.randn(64)
    packed = off.pack(big)
    assert off.tensors == 1 and torch.equal(off.unpack(packed), big)


@pytest.mark.parametrize("checkpointing, scope", [(True, "checkpoints"), (False, "all")])
def test_prefetch_serves_the_backward_ahead_and_changes_no_number(tiny_row, run_tiny, checkpointing, scope):
    row = dict(gradient_checkpointing=checkpointing, **ROW)
    plain = run_tiny(tiny_row("lora", "offload", name="on_demand", offload={"scope": scope, "min_bytes": 0}, **row))
    ahead = run_tiny(tiny_row("lora", "offload", name="prefetch",
                              offload={"scope": scope, "min_bytes": 0, "prefetch": 2}, **row))
    assert plain["offload_prefetched_per_step"] == 0
    assert 0 < ahead["offload_prefetched_per_step"] <= ahead["offload_tensors_per_step"]
    assert ahead["train_loss_curve"] == pytest.approx(plain["train_loss_curve"], rel=1e-6)


def test_prefetch_walks_back_from_the_tensor_taken_and_unlinks_it():
    off = HostOffloader(min_bytes=0, prefetch=2)
    tensors = [torch.full((8,), float(i)) for i in range(5)]
    packed = [off.pack(t) for t in tensors]
    assert packed[0].prev is None and all(p.prev is q for p, q in zip(packed[1:], packed))
    assert torch.equal(off.unpack(packed[4]), tensors[4])  # the first the backward takes: copied on demand
    assert off.last is None and packed[4].prev is None
    assert [p.fetched is not None for p in packed] == [False, False, True, True, False]
    assert torch.equal(off.unpack(packed[3]), tensors[3]) and off.prefetched == 1
    assert packed[1].fetched is not None  # 3 took 2 (already on its way) and 1 along
    for i in (2, 1, 0):
        assert torch.equal(off.unpack(packed[i]), tensors[i])
    assert off.prefetched == 4  # every tensor but the first the backward took was ready when taken
