"""lazy_tokenize: an iterable that tokenizes in the loader, counts honestly, and composes with packing."""

from __future__ import annotations

from torch.utils.data import IterableDataset

from tunerkit.data.chat import encode_record
from tunerkit.data.lazy import LazyTokenizedDataset
from tunerkit.data.packing import StreamingPacker
from tunerkit.data.truncation import apply_truncation


def arithmetic_records(n=24):
    from tunerkit.data.builtin import train_records

    return train_records(n, seed=0)


def lazy(tok, records, max_length=128, strategy="delete", metrics=None, **kw):
    return LazyTokenizedDataset(records, lambda r: encode_record(tok, r), max_length=max_length, strategy=strategy,
                                seed=7, metrics=metrics, **kw)


def test_hook_returns_an_iterable_that_matches_eager_tokenization(tiny_row, tiny_context):
    ctx = tiny_context(tiny_row("lora", "lazy_tokenize"))
    records = arithmetic_records()
    data = ctx.hook.tokenize_dataset(ctx=ctx, split="train", records=records)
    assert isinstance(data, IterableDataset) and len(data) == len(records)
    eager = [encode_record(ctx.tokenizer, r) for r in records]
    assert sorted(s["input_ids"] for s in data) == sorted(s["input_ids"] for s in eager)
    assert ctx.metrics["train_samples"] == 24 and ctx.metrics["train_counts_complete"] is True
    # Evaluation data stays eager (a list), tokenized by the core.
    assert isinstance(ctx.hook.tokenize_dataset(ctx=ctx, split="eval", records=records[:4]), list)


def test_passes_are_seeded_and_differ(tiny_row, tiny_context):
    tok = tiny_context(tiny_row("lora")).tokenizer
    a, b = lazy(tok, arithmetic_records()), lazy(tok, arithmetic_records())
    first_a, first_b, second_a = list(a), list(b), list(a)
    assert first_a == first_b  # same seed, same order on every row
    assert first_a != second_a and sorted(map(str, first_a)) == sorted(map(str, second_a))


def test_truncation_strategy_and_counts_match_eager(tiny_row, tiny_context):
    tok = tiny_context(tiny_row("lora")).tokenizer
    records = arithmetic_records(40)
    eager = [encode_record(tok, r) for r in records]
    cutoff = sorted(len(s["input_ids"]) for s in eager)[20]  # about half the samples are longer
    for strategy in ("delete", "truncation_left", "truncation_right"):
        metrics = {}
        data = lazy(tok, records, max_length=cutoff, strategy=strategy, metrics=metrics, probe_size=40)
        kept, counts = apply_truncation(eager, cutoff, strategy)
        assert len(data) == len(kept)  # the probe covered everything: the length is exact
        got = list(data)
        assert sorted(s["input_ids"] for s in got) == sorted(s["input_ids"] for s in kept)
        assert metrics["train_samples_dropped"] == counts["samples_dropped"]
        assert metrics["train_samples_truncated"] == counts["samples_truncated"]
        assert metrics["train_samples"] == len(kept)


def test_length_is_estimated_from_a_probe_when_samples_get_dropped(tiny_row, tiny_context):
    tok = tiny_context(tiny_row("lora")).tokenizer
    records = arithmetic_records(60)
    lengths = [len(encode_record(tok, r)["input_ids"]) for r in records]
    cutoff = sorted(lengths)[len(lengths) // 2] - 1  # the longest group (about half) is deleted
    true_kept = sum(n <= cutoff for n in lengths)
    data = lazy(tok, records, max_length=cutoff, probe_size=20)
    assert data.probe_seen == 20
    assert 0 < len(data) < 60 and 0 < true_kept < 60
    assert abs(len(data) - true_kept) <= 0.35 * 60  # an estimate from 20 records, not a count
    assert sum(1 for _ in data) == true_kept  # the pass itself yields exactly the kept samples


def test_streaming_packer_over_the_lazy_stream(tiny_row, tiny_context):
    tok = tiny_context(tiny_row("lora")).tokenizer
    data = lazy(tok, arithmetic_records(30))
    packer = StreamingPacker(data, 128, buffer_size=8, seed=7)
    rows = list(packer)
    assert sum(len(r["seq_lengths"]) for r in rows) == 30 and all(len(r["input_ids"]) <= 128 for r in rows)
    assert len(packer) >= 1 and abs(len(packer) - len(rows)) <= max(2, len(rows) // 3)


def test_lora_packing_lazytokenize_row(tiny_row, run_tiny):
    row = tiny_row("lora", "packing", "lazy_tokenize", lora={"rank": 4}, max_steps=None, epochs=1.0, batch_size=2)
    m = run_tiny(row)
    assert m["train_samples"] == 16  # every original sample once in one epoch
    assert m["train_counts_complete"] is True and m["train_samples_dropped"] == 0
    assert m["packed_rows_streamed"] == m["packed_rows_estimated"]
    assert m["optimizer_steps"] == -(-m["packed_rows_estimated"] // 2)
    assert m["attention"] == "varlen: sdpa per sample" and m["eval_loss"] > 0
