"""packing: per-sample losses of a packed row equal the unpacked ones (the defining property)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from tunerkit.data.collate import FlatteningCollator, PaddingCollator
from tunerkit.errors import UserError
from tunerkit_plugins.data import varlen_attention as va


def random_samples(lengths, seed=0):
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(10, 2000) for _ in range(n)]
        # a prompt part without loss, then the answer: like a chat sample
        out.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    return out


def summed_losses(logits, labels, bounds):
    """Token-summed causal CE of every sample [start, end) of a row."""
    return torch.stack([F.cross_entropy(logits[0, s:e - 1].float(), labels[0, s + 1:e], ignore_index=-100,
                                        reduction="sum") for s, e in zip(bounds[:-1], bounds[1:])])


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("num_samples", "num_tokens", "labels")}


@pytest.fixture
def packed_ctx(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("full", "packing"))
    yield ctx
    assert not ctx.close()


def test_packed_per_sample_losses_equal_unpacked(packed_ctx):
    model = packed_ctx.model
    assert model.config._attn_implementation == va.NAME
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # GQA is exercised
    samples = random_samples([17, 5, 40, 9, 23])
    batch = FlatteningCollator()(samples)
    bounds = batch["cu_seq_lens_q"].reshape(-1).tolist()

    packed = summed_losses(model(**model_inputs(batch)).logits, batch["labels"], bounds)
    alone = torch.stack([summed_losses(model(input_ids=torch.tensor([s["input_ids"]])).logits,
                                       torch.tensor([s["labels"]]), [0, len(s["input_ids"])])[0] for s in samples])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)

    # The model's own loss (what training optimises) is the token mean of the unpacked losses.
    label_tokens = sum(sum(l != -100 for l in s["labels"][1:]) for s in samples)
    loss = model(**model_inputs(batch), labels=batch["labels"]).loss
    torch.testing.assert_close(loss, alone.sum() / label_tokens, rtol=1e-5, atol=1e-5)


def test_packed_gradients_equal_unpacked_under_gradient_checkpointing(packed_ctx):
    from tunerkit.checkpointing import enable_gradient_checkpointing

    model = packed_ctx.model
    enable_gradient_checkpointing(model)  # the varlen kwargs must reach checkpointed layers too
    model.train()
    samples = random_samples([12, 30, 7])
    weight = model.model.layers[0].self_attn.q_proj.weight
    batch = FlatteningCollator()(samples)
    packed = summed_losses(model(**model_inputs(batch)).logits, batch["labels"], batch["cu_seq_lens_q"].reshape(-1).tolist())
    packed.sum().backward()
    packed = packed.detach()
    grad_packed, weight.grad = weight.grad.clone(), None
    alone = []
    for s in samples:
        ids = torch.tensor([s["input_ids"]])
        loss = summed_losses(model(input_ids=ids).logits, torch.tensor([s["labels"]]), [0, ids.shape[1]])[0]
        loss.backward()
        alone.append(loss.detach())
    torch.testing.assert_close(packed, torch.stack(alone), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_packed, weight.grad, rtol=1e-4, atol=1e-6)


def test_without_varlen_attention_samples_would_leak(packed_ctx):
    """Control: the same packed row through plain SDPA attends across samples and changes losses."""
    model = packed_ctx.model
    samples = random_samples([20, 20, 20], seed=1)
    batch = FlatteningCollator()(samples)
    bounds = batch["cu_seq_lens_q"].reshape(-1).tolist()
    with torch.no_grad():
        good = summed_losses(model(**model_inputs(batch)).logits, batch["labels"], bounds)
        assert not packed_ctx.close()
        assert model.config._attn_implementation == "sdpa"  # teardown restored the original
        leaky = summed_losses(model(input_ids=batch["input_ids"]).logits, batch["labels"], bounds)
    torch.testing.assert_close(good[0], leaky[0])  # the first sample sees nothing before it either way
    assert (good[1:] - leaky[1:]).abs().min() > 1e-3


def test_padded_batches_still_work_after_installation(packed_ctx, tiny_row, tiny_context):
    """Evaluation and generation send padded batches with a mask: plain SDPA behaviour."""
    samples = random_samples([6, 15, 11], seed=2)
    batch = PaddingCollator(0)(samples)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    plain = tiny_context(tiny_row("full")).model  # same seeded random weights, sdpa attention
    with torch.no_grad():
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(packed_ctx.model(**inputs).logits[mask], plain(**inputs).logits[mask],
                                   rtol=1e-5, atol=1e-5)


def test_kernel_choice_on_this_machine():
    cpu = torch.device("cpu")
    assert va.resolve_kernel("auto", cpu, torch.float32) == "sdpa"
    assert va.resolve_kernel("auto", cpu, torch.bfloat16) == "sdpa"
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        va.resolve_kernel("torch_varlen", cpu, torch.bfloat16)
    if va.TORCH_VARLEN is not None:  # torch >= 2.10: the causal switch was read from the signature
        _, causal, _, _ = va.TORCH_VARLEN
        assert causal in ({"window_size": (-1, 0)}, {"is_causal": True})


def test_packing_and_padding_free_exclude_each_other(tiny_row):
    with pytest.raises(UserError, match="cannot run with"):
        tiny_row("lora", "packing", "padding_free")


def test_lora_packing_row_trains_and_counts_original_samples(tiny_row, run_tiny):
    row = tiny_row("lora", "packing", lora={"rank": 4}, max_steps=None, epochs=1.0, batch_size=2,
                   gradient_checkpointing=True)  # the varlen kwargs must survive checkpointed layers
    m = run_tiny(row)
    assert m["attention"] == "varlen: sdpa per sample"
    assert m["packed_samples"] == 16 and m["packed_rows"] < 16
    assert 0 < m["packing_efficiency"] <= 1
    # One epoch: every original sample counted once, whatever the number of packed rows.
    assert m["train_samples"] == 16
    assert m["optimizer_steps"] == -(-m["packed_rows"] // 2)
    assert m["eval_loss"] > 0


def packed_row_lengths(tiny_row, tiny_context, samples, **packing):
    """Lengths of the rows packing builds from ``samples`` at max_length 32, with ``packing`` options."""
    ctx = tiny_context(tiny_row("full", "packing", max_length=32, packing=packing))
    try:
        ctx.datasets["train"] = [dict(s) for s in samples]
        ctx.hook.transform_dataset(ctx=ctx, split="train")
        return sorted(len(r["input_ids"]) for r in ctx.datasets["train"]), ctx.metrics
    finally:
        ctx.hook.teardown(ctx=ctx)


def test_row_length_packs_longer_rows_than_max_length(tiny_row, tiny_context):
    samples = random_samples([32] * 8 + [20, 12])
    lengths, _ = packed_row_lengths(tiny_row, tiny_context, samples)
    assert lengths == [32] * 9  # one row per max_length: the 20- and 12-token samples share one
    lengths, metrics = packed_row_lengths(tiny_row, tiny_context, samples, row_length=128)
    assert sum(lengths) == 32 * 8 + 32 and max(lengths) <= 128 and len(lengths) == 3
    assert metrics["packed_samples"] == 10 and metrics["packing_efficiency"] == pytest.approx(288 / (3 * 128))


def test_row_length_unset_keeps_stored_rows_config_hash(tiny_row):
    plain = tiny_row("lora", "packing")
    assert "row_length" not in plain.config()["options"]["packing"]
    assert "row_length" in tiny_row("lora", "packing", packing={"row_length": 4096}).config()["options"]["packing"]


def test_row_length_below_max_length_is_refused_before_anything_runs(tiny_row):
    from tunerkit.validation import validate_row

    with pytest.raises(UserError, match=r"row_length \(64\) is below max_length \(128\)"):
        validate_row(tiny_row("lora", "packing", packing={"row_length": 64}), file="r.toml")
    with pytest.raises(UserError, match="row_length must be >= 1"):
        tiny_row("lora", "packing", packing={"row_length": 0})
