"""neftune: uniform embedding noise within ±alpha/sqrt(L*d) in train mode only; unhooked at teardown."""

import functools
import math

import torch

from .modelside_helpers import logits, sample_ids


def test_noise_only_in_training_with_the_right_bound(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "neftune", neftune={"alpha": 5.0}))
    embeddings = ctx.model.get_input_embeddings()
    ids = sample_ids(batch=2, length=10)
    clean = embeddings.weight[ids].detach()
    bound = 5.0 / math.sqrt(10 * clean.shape[-1])

    ctx.model.train()
    first, second = embeddings(ids) - clean, embeddings(ids) - clean
    assert first.abs().max() <= bound * (1 + 1e-5)
    assert first.abs().max() > 0.9 * bound  # 1280 uniform draws reach close to the bound
    assert first.mean().abs() < 0.1 * bound  # centred
    assert not torch.equal(first, second)  # fresh noise every forward

    ctx.model.eval()
    assert torch.equal(embeddings(ids), clean)
    assert torch.equal(logits(ctx.model, ids), logits(ctx.model, ids))


def test_teardown_removes_the_hook(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "neftune"))
    embeddings = ctx.model.get_input_embeddings()
    assert len(embeddings._forward_hooks) == 1
    assert not ctx.close()
    assert len(embeddings._forward_hooks) == 0 and not hasattr(embeddings, "neftune_noise_alpha")
    ctx.model.train()
    ids = sample_ids()
    assert torch.equal(embeddings(ids), embeddings.weight[ids])


def test_lora_plus_neftune_row_trains_noisy_and_leaves_nothing_hooked(tiny_row, run_tiny, monkeypatch):
    import tunerkit_plugins.tuners.neftune as neftune

    seen, modes = [], []
    real_hook = neftune._hook_function()

    def counting_hook(module, args, output):
        modes.append(module.training)
        return real_hook(module, args, output)

    original_modify = neftune.NEFTune.modify_model

    @functools.wraps(original_modify)  # keeps pluggy's hookimpl marker
    def capturing_modify(self, ctx):
        original_modify(self, ctx)
        seen.append(ctx.model.get_input_embeddings())

    monkeypatch.setattr(neftune, "_hook_function", lambda: counting_hook)
    monkeypatch.setattr(neftune.NEFTune, "modify_model", capturing_modify)
    m = run_tiny(tiny_row("lora", "neftune", max_steps=2))
    assert m["optimizer_steps"] == 2 and m["neftune_alpha"] == 15.0 and "eval_loss" in m
    assert modes[:2] == [True, True]  # one noisy forward per training step (batch 4, no accumulation)
    assert False in modes  # eval loss ran in eval mode, without noise
    (embeddings,) = seen
    assert len(embeddings._forward_hooks) == 0 and not hasattr(embeddings, "neftune_noise_alpha")
