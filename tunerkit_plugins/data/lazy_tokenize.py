"""lazy_tokenize: tokenize inside the data loader instead of ahead of time.

The training split becomes an iterable (:class:`tunerkit.data.lazy.LazyTokenizedDataset`)
that encodes each record when it is drawn, with the row's chat template, system prompt,
``truncation_strategy`` and ``max_length``; the evaluation split stays eager. Its length
is the expected number of samples (raw records times the fraction a seeded probe of
``probe_size`` records kept); the real counts of the first pass are recorded as they
happen. With ``packing``, samples are packed per buffer as they stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from tunerkit import Plugin, hookimpl, option
from tunerkit.errors import RowFailed


@dataclass
class LazyTokenizeOptions:
    probe_size: int = option(256, "records tokenized up front to estimate the samples per pass (for step planning)", min=1)


class LazyTokenize(Plugin):
    name = "lazy_tokenize"
    conformance = {"companions": ["lora"]}
    summary = "tokenize in the data loader (an iterable dataset) instead of ahead of time"
    Options = LazyTokenizeOptions

    @hookimpl
    def tokenize_dataset(self, ctx, split, records):
        if split != "train":
            return None  # evaluation data stays eager: it is small and evaluators index it
        from tunerkit.data.chat import encode_record
        from tunerkit.data.lazy import LazyTokenizedDataset
        from tunerkit.data.truncation import deleted_over

        s = ctx.settings
        encode = partial(encode_record, ctx.tokenizer, system=s.system, train_on_prompt=s.train_on_prompt,
                         deleted_over=deleted_over(s.max_length, s.truncation_strategy))
        data = LazyTokenizedDataset(records, encode, max_length=s.max_length, strategy=s.truncation_strategy,
                                    seed=s.seed, metrics=ctx.metrics, prefix=split,
                                    probe_size=self.options.probe_size)
        expected = len(data)
        if expected == 0:
            raise RowFailed(f"no training sample left in a probe of {data.probe_seen} "
                            f"records (max_length={s.max_length}, truncation_strategy={s.truncation_strategy!r})")
        probe = data.probe_lengths()
        ctx.metrics[f"{split}_samples"] = expected  # replaced by the real count as the first pass runs
        ctx.metrics[f"{split}_samples_expected"] = expected
        ctx.metrics[f"{split}_mean_tokens"] = sum(probe) / len(probe)  # planning figure for token budgets
        return data
