"""uncheckpointed_layers: the chosen layers run once and keep their activations; the others
are rerun in the backward as before; the training itself is unchanged."""

from __future__ import annotations

import pytest
import torch

from tunerkit import hookimpl
from tunerkit.checkpointing import checkpointed_layers, spread


class CountLayerCalls:
    """Counts each decoder layer's runs (of its MLP) and the bytes autograd saves in one step."""

    def __init__(self):
        self.calls: list[int] = []
        self.saved_bytes = 0
        self.handles = []

    @hookimpl
    def on_train_begin(self, ctx):
        from tunerkit_plugins._helpers.layers import decoder_stack

        owner, attr = decoder_stack(ctx.unwrapped_model())
        layers = getattr(owner, attr)
        self.calls = [0] * len(layers)
        for i, layer in enumerate(layers):
            # on a submodule: the recompute reruns the layer's forward, not the hooks of its own __call__
            self.handles.append(layer.mlp.register_forward_pre_hook(self.counter(i)))

    def counter(self, i):
        def count(module, args):
            self.calls[i] += 1
        return count

    @hookimpl
    def compute_loss(self, ctx, model, batch):
        def pack(t):
            self.saved_bytes += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return model(**batch).loss

    @hookimpl
    def teardown(self, ctx):
        for h in self.handles:
            h.remove()


def test_spread_picks_evenly_spaced_distinct_layers():
    assert spread(4, 32) == [4, 12, 20, 28]
    assert spread(1, 4) == [2]
    assert spread(32, 32) == list(range(32))
    assert all(len(set(spread(k, 7))) == k for k in range(1, 8))


def run(tiny_row, tmp_path, name, **settings):
    from tunerkit.loop import run_row

    spy = CountLayerCalls()
    row = tiny_row("lora", name=name, gradient_checkpointing=True, evaluate=[], max_steps=1, **settings)
    metrics = run_row(row, tmp_path / name, extra_plugins=[spy])
    return metrics, spy


def test_left_out_layers_run_once_keep_more_activations_and_train_the_same(tiny_row, tmp_path):
    full, full_spy = run(tiny_row, tmp_path, "all")
    part, part_spy = run(tiny_row, tmp_path, "some", uncheckpointed_layers=2)

    layers = len(full_spy.calls)
    left_out = part["uncheckpointed_layer_indices"]
    assert left_out == spread(2, layers) and "uncheckpointed_layer_indices" not in full
    # forward + recompute for checkpointed layers, the forward alone for the ones left out
    assert full_spy.calls == [2] * layers
    assert part_spy.calls == [1 if i in left_out else 2 for i in range(layers)]
    # the memory side of the trade: the layers left out keep their activations for the backward
    assert part_spy.saved_bytes > full_spy.saved_bytes
    # the same arithmetic: only what is kept differs, not what is computed
    assert part["train_loss_curve"] == pytest.approx(full["train_loss_curve"], rel=1e-6)


def test_gradients_equal_full_checkpointing(tiny_context, tiny_row):
    from tunerkit.checkpointing import enable_gradient_checkpointing, leave_layers_unchecked

    grads = []
    for count in (0, 3):
        ctx = tiny_context(tiny_row("lora", gradient_checkpointing=True))
        enable_gradient_checkpointing(ctx.model)
        assert leave_layers_unchecked(ctx.model, count) == (spread(count, 4) if count else [])
        assert len(checkpointed_layers(ctx.model)) == 4 - count
        ctx.model.train()
        ids = torch.arange(1, 33).unsqueeze(0)
        ctx.model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in ctx.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_more_layers_than_the_model_has_fails_the_row_with_a_hint(tiny_row, tmp_path):
    from tunerkit.errors import RowFailed
    from tunerkit.loop import run_row

    with pytest.raises(RowFailed, match="uncheckpointed_layers = 9, but the model has 4 checkpointed layers"):
        run_row(tiny_row("lora", gradient_checkpointing=True, uncheckpointed_layers=9, evaluate=[], max_steps=1),
                tmp_path / "r")


def test_plugins_that_wrap_checkpoint_calls_see_only_the_checkpointed_layers(tiny_row, tmp_path):
    """offload moves only the inputs of the layers still checkpointed; the others keep theirs on the device."""
    from tunerkit.loop import run_row

    counts = []
    for left_out in (0, 1):
        row = tiny_row("lora", "offload", gradient_checkpointing=True, uncheckpointed_layers=left_out, evaluate=[],
                       max_steps=1, offload={"min_bytes": 0})
        counts.append(run_row(row, tmp_path / str(left_out))["offload_tensors_per_step"])
    # the same tensors for each checkpointed layer (its inputs), one of the four layers fewer
    assert counts[0] > 0 and counts[1] * 4 == counts[0] * 3, counts

