"""sequence_parallel: batches Ulysses can shard, the loss it can compute, the refusals, the metrics."""

from __future__ import annotations

import pytest
import torch

from tunerkit.data.collate import PaddingCollator
from tunerkit.errors import UserError
from tunerkit.validation import validate_row
from tunerkit_plugins.parallel.sequence_parallel import SequenceParallel, SequenceParallelOptions, ShardableCollator


def examples(*lengths):
    return [{"input_ids": list(range(10, 10 + n)), "labels": [-100] * (n // 2) + list(range(10 + n // 2, 10 + n))}
            for n in lengths]


def test_collator_pads_to_a_multiple_and_adds_positions():
    batch = ShardableCollator(PaddingCollator(0), multiple=4, pad_token_id=7)(examples(9))
    assert batch["input_ids"].shape == (1, 12)
    assert batch["input_ids"][0, 9:].tolist() == [7, 7, 7]
    assert batch["labels"][0, 9:].tolist() == [-100] * 3
    assert batch["position_ids"][0].tolist() == list(range(12))
    assert "attention_mask" not in batch  # Ulysses masks causally by position; a 2-D mask would only be dropped
    assert batch["num_tokens"] == 9 and batch["num_samples"] == 1  # counts stay the real ones


def test_collator_keeps_packed_positions_and_continues_them():
    def packed(examples_):
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        return {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.tensor([[0, 1, 2, 0, 1]]),
                "num_samples": 2, "num_tokens": 5}

    batch = ShardableCollator(packed, multiple=2, pad_token_id=0)(None)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 2]


def test_collator_refuses_tensors_it_cannot_shard():
    def varlen(examples_):
        ids = torch.ones(1, 6, dtype=torch.long)
        return {"input_ids": ids, "labels": ids, "cu_seq_lens_q": torch.tensor([0, 3, 6])}

    with pytest.raises(ValueError, match="cannot shard batch\\['cu_seq_lens_q'\\]"):
        ShardableCollator(varlen, multiple=2, pad_token_id=0)(None)


def test_loss_of_a_shard_uses_its_shifted_labels(tiny_context, tiny_row):
    """What the adapter hands the model (shift_labels, no labels) scores the same tokens as the labels did."""
    row = tiny_row("full", "sequence_parallel", attention="sdpa")
    ctx = tiny_context(row)
    plugin = SequenceParallel(row.options["sequence_parallel"])
    ids = torch.randint(10, 1000, (1, 8))
    labels = ids.clone()
    labels[0, :3] = -100
    want = ctx.model(input_ids=ids, labels=labels).loss
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    batch = {"input_ids": ids, "position_ids": torch.arange(8)[None], "shift_labels": shift}
    wrapper = plugin.compute_loss(ctx, ctx.model, batch)
    next(wrapper)  # the wrapper's part before the loss is computed
    assert torch.equal(batch["labels"], shift)
    torch.testing.assert_close(ctx.model(**batch).loss, want)


def test_validate_refusals(tiny_row, monkeypatch):
    bad = [({"gpus": 3}, "not a multiple of sp_size"),
           ({"gpus": 2, "attention": "eager"}, "sdpa"),
           ({"gpus": 2, "batch_size": 2}, "batch_size = 1"),
           ({"gpus": 6, "sequence_parallel": {"sp_size": 3}}, "attention heads")]
    for overrides, words in bad:
        row = tiny_row("lora", "sequence_parallel", **{"batch_size": 1, **overrides})
        reason = SequenceParallel(row.options["sequence_parallel"]).validate(row)
        assert reason and words in reason and "\n" not in reason, (overrides, reason)
    ok = tiny_row("lora", "sequence_parallel", gpus=2, batch_size=1, attention="sdpa")
    assert SequenceParallel(ok.options["sequence_parallel"]).validate(ok) is None
    with pytest.raises(UserError, match="batch_size = 1"):
        validate_row(tiny_row("lora", "sequence_parallel", gpus=2, batch_size=4), file="r.toml")


def test_sp_size_must_be_positive():
    from tunerkit.errors import UserError
    from tunerkit.options import build

    with pytest.raises(UserError, match="allowed: >= 1"):
        build(SequenceParallelOptions, {"sp_size": 0})


def test_metrics_report_the_data_parallel_width():
    class Ctx:
        world_size = 4

    assert SequenceParallel(SequenceParallelOptions(sp_size=2)).collect_metrics(Ctx()) == {
        "sp_size": 2, "effective_dp_size": 2}


def test_one_gpu_per_sequence_leaves_the_accelerator_to_others(tiny_row):
    row = tiny_row("lora", "sequence_parallel", sequence_parallel={"sp_size": 1})
    assert SequenceParallel(row.options["sequence_parallel"]).setup_distributed(None) is None


def test_packed_rows_are_refused_up_front(tiny_row):
    with pytest.raises(UserError, match="'sequence_parallel' cannot run with 'packing'"):
        tiny_row("lora", "packing", "sequence_parallel", gpus=2)
