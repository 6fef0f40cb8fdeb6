"""padding_free: a flattened micro-batch gives the padded batch's losses, without pad tokens."""

from __future__ import annotations

import torch

from tunerkit.data.collate import FlatteningCollator, PaddingCollator
from tunerkit_plugins.data import packing, padding_free, varlen_attention

from .test_packing import model_inputs, random_samples, summed_losses


def test_shares_packings_collator_and_attention():
    assert issubclass(padding_free.PaddingFree, varlen_attention.FlatBatchHooks)
    assert issubclass(packing.Packing, varlen_attention.FlatBatchHooks)
    assert not hasattr(padding_free.PaddingFree, "transform_dataset")  # no bin packing


def test_flattened_losses_equal_padded_batch_losses(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("full", "padding_free"))
    try:
        model = ctx.model
        samples = random_samples([9, 31, 4, 18], seed=5)
        assert ctx.hook.make_collator(ctx=ctx, split="train").__class__ is FlatteningCollator
        flat = FlatteningCollator()(samples)
        padded = PaddingCollator(0)(samples)
        assert flat["num_tokens"] == padded["num_tokens"] == flat["input_ids"].numel()  # no pad tokens
        with torch.no_grad():
            flat_losses = summed_losses(model(**model_inputs(flat)).logits, flat["labels"],
                                        flat["cu_seq_lens_q"].reshape(-1).tolist())
            logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
            padded_losses = torch.stack([summed_losses(logits[i:i + 1], padded["labels"][i:i + 1],
                                                       [0, len(s["input_ids"])])[0] for i, s in enumerate(samples)])
            torch.testing.assert_close(flat_losses, padded_losses, rtol=1e-5, atol=1e-4)
            # The batch loss the loop optimises: identical up to float summation order.
            flat_loss = model(**model_inputs(flat), labels=flat["labels"]).loss
            padded_loss = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                                labels=padded["labels"]).loss
            torch.testing.assert_close(flat_loss, padded_loss, rtol=1e-5, atol=1e-5)
        assert ctx.hook.make_collator(ctx=ctx, split="eval").__class__ is PaddingCollator  # eval stays padded
    finally:
        assert not ctx.close()
    assert ctx.model.config._attn_implementation == "sdpa"
