"""loraplus: lora_B (and 1-D params) at lr * ratio, lora_A at lr, LoRA embeddings at lr_embedding."""

import pytest


def lr_by_name(ctx, optimizer, key="lr"):
    lr_of = {id(p): g[key] for g in optimizer.param_groups for p in g["params"]}
    return {n: lr_of.get(id(p)) for n, p in ctx.model.named_parameters() if p.requires_grad}


def test_param_groups_follow_loraplus(tiny_row, tiny_context):
    lr = 1e-3
    ctx = tiny_context(tiny_row("loraplus", learning_rate=lr,
                                loraplus={"targets": ["q_proj", "v_proj", "embed_tokens"]}))
    ctx.model.get_submodule("base_model.model.model.norm").weight.requires_grad_(True)  # a 1-D trainable param
    optimizer = ctx.hook.make_optimizer(ctx=ctx, groups=ctx.hook.param_groups(ctx=ctx))
    lrs = lr_by_name(ctx, optimizer)
    assert None not in lrs.values(), "every trainable parameter is in a group"
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(lrs)
    seen = set()
    for name, got in lrs.items():
        if "lora_embedding" in name:
            kind, want = "embedding", 1e-6
        elif "lora_B" in name:
            kind, want = "B", lr * 16
        elif "lora_A" in name:
            kind, want = "A", lr
        else:
            assert name.endswith("model.norm.weight")
            kind, want = "1-D", lr * 16
        seen.add(kind)
        assert got == pytest.approx(want), name
    assert seen == {"embedding", "B", "A", "1-D"}
    # Weight decay as in every row: the row's value on matrices, none on norms and biases.
    decay = lr_by_name(ctx, optimizer, key="weight_decay")
    assert {d for n, d in decay.items() if "lora_" in n} == {ctx.settings.weight_decay}
    assert decay["base_model.model.model.norm.weight"] == 0.0


def test_options_change_the_ratio_and_plain_lora_keeps_one_lr(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("loraplus", learning_rate=1e-3, loraplus={"lr_ratio": 4.0}))
    lrs = lr_by_name(ctx, ctx.hook.make_optimizer(ctx=ctx, groups=ctx.hook.param_groups(ctx=ctx)))
    b_lrs = [lr for n, lr in lrs.items() if "lora_B" in n]
    assert b_lrs and b_lrs == pytest.approx([4e-3] * len(b_lrs))
    plain = tiny_context(tiny_row("lora", learning_rate=1e-3))
    lrs = lr_by_name(plain, plain.hook.make_optimizer(ctx=plain, groups=plain.hook.param_groups(ctx=plain)))
    assert set(lrs.values()) == {1e-3}
