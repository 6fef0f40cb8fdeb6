"""llamapro: identity blocks inserted (forward and cached generation unchanged), only they train, reloadable."""

import pytest
import torch

from .modelside_helpers import fresh_base, logits, sample_ids


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2"])
def test_expanded_model_computes_what_the_original_did(tiny_row, tiny_context, model):
    ctx = tiny_context(tiny_row("llamapro", model=model))
    base = fresh_base(model)
    layers = ctx.model.model.layers
    assert len(layers) == ctx.model.config.num_hidden_layers == 8
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(8))
    if getattr(ctx.model.config, "layer_types", None) is not None:
        assert len(ctx.model.config.layer_types) == 8
    ids = sample_ids()
    torch.testing.assert_close(logits(ctx.model, ids), logits(base, ids), rtol=0, atol=1e-6)
    generate = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ctx.model.generate(ids, **generate), base.generate(ids, **generate))


def test_uneven_count_leaves_the_last_blocks_without_a_copy(tiny_row, tiny_context):
    # 30-layer SmolLM2 with 4 new blocks: one after every 7, none after the last 2. Here 4 layers, 3 new.
    ctx = tiny_context(tiny_row("llamapro", llamapro={"num_new_blocks": 3}))
    assert ctx.state["llamapro"]["new_blocks"] == [1, 3, 5]
    assert len(ctx.model.model.layers) == ctx.model.config.num_hidden_layers == 7
    ids = sample_ids()
    torch.testing.assert_close(logits(ctx.model, ids), logits(fresh_base(), ids), rtol=0, atol=1e-6)


def test_only_new_blocks_train(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("llamapro", llamapro={"num_new_blocks": 2}))
    new = ctx.state["llamapro"]["new_blocks"]
    assert new == [2, 5]  # after every 2 of the 4 original blocks
    for index, layer in enumerate(ctx.model.model.layers):
        assert all(p.requires_grad == (index in new) for p in layer.parameters())
    trainable = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("model.layers.2.", "model.layers.5.")) for n in trainable)
    for index in new:
        block = ctx.model.model.layers[index]
        assert not block.self_attn.o_proj.weight.any() and not block.mlp.down_proj.weight.any()


def test_saved_checkpoint_loads_with_plain_transformers(tiny_row, tiny_context, tmp_path):
    from transformers import AutoModelForCausalLM

    ctx = tiny_context(tiny_row("llamapro"))
    with torch.no_grad():  # a trained-looking new block, so the reload has something to get right
        ctx.model.model.layers[1].self_attn.o_proj.weight.normal_(std=0.02)
    ctx.hook.save_artifacts(ctx=ctx, out_dir=tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert loaded.config.num_hidden_layers == 8 and len(loaded.model.layers) == 8
    ids = sample_ids()
    torch.testing.assert_close(logits(loaded, ids), logits(ctx.model, ids))
