"""Tokenization inside the data loader: an iterable that encodes records as they are drawn.

Nothing is tokenized ahead of time, so a row starts at once and holds only raw records in
memory. Each pass visits the records in a seeded random order (different per pass, the
same for every row with the same seed), encodes each, applies ``truncation_strategy`` and
drops samples with no label token, exactly as eager tokenization does.

Counting. Eager tokenization knows how many samples survive before training; here that
is known only after a pass. ``__len__`` is therefore the *expected* number of samples:
the raw record count times the fraction kept in a seeded probe of ``probe_size`` records
(exact when the probe dropped nothing and nothing outside it is dropped). The real counts
of the first pass land in the metrics (``train_samples``, ``train_samples_dropped``, ...)
as they are observed; ``train_counts_complete`` says whether that pass finished.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator

from torch.utils.data import IterableDataset

from tunerkit.data.chat import has_labels
from tunerkit.data.truncation import truncate_one

COUNT_KEYS = ("samples", "samples_dropped", "samples_truncated", "samples_without_labels", "tokens")


class LazyTokenizedDataset(IterableDataset):
    def __init__(self, records: list[dict], encode: Callable[[dict], dict], *, max_length: int,
                 strategy: str, seed: int, metrics: dict[str, Any] | None = None, prefix: str = "train",
                 probe_size: int = 256):
        self.records, self.encode = records, encode
        self.max_length, self.strategy, self.seed = max_length, strategy, seed
        self.metrics = metrics if metrics is not None else {}
        self.prefix, self.probe_size = prefix, probe_size
        self.passes = 0
        self._probe: list[int] | None = None
        self._probe_seen = 0

    # -- one sample ------------------------------------------------------------
    def encode_one(self, record: dict) -> tuple[dict | None, str]:
        """(the training sample or None, what happened: kept/truncated/dropped/without_labels)."""
        sample, what = truncate_one(self.encode(record), self.max_length, self.strategy)
        if sample is not None and not has_labels(sample):
            return None, "without_labels"
        return sample, what

    # -- iteration ---------------------------------------------------------------
    def order(self, pass_index: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(f"{self.seed}-lazy-{pass_index}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[dict]:
        pass_index = self.passes
        self.passes += 1
        counts = dict.fromkeys(COUNT_KEYS, 0)
        first = pass_index == 0
        for i in self.order(pass_index):
            sample, what = self.encode_one(self.records[i])
            if what != "kept":
                counts[f"samples_{what}"] += 1
            if sample is not None:
                counts["samples"] += 1
                counts["tokens"] += len(sample["input_ids"])
            if first:
                self._publish(counts, complete=False)
            if sample is not None:
                yield sample
        if first:
            self._publish(counts, complete=True)

    def _publish(self, counts: dict, complete: bool) -> None:
        for key, value in counts.items():
            if key != "tokens":
                self.metrics[f"{self.prefix}_{key}"] = value
        if counts["samples"]:
            self.metrics[f"{self.prefix}_mean_sample_tokens"] = counts["tokens"] / counts["samples"]
        self.metrics[f"{self.prefix}_counts_complete"] = complete

    # -- planning without tokenizing everything ----------------------------------
    def probe_lengths(self) -> list[int]:
        """Lengths of the kept samples among ``probe_size`` seeded records (tokenized once)."""
        if self._probe is None:
            rng = random.Random(f"{self.seed}-probe")
            picks = rng.sample(range(len(self.records)), min(self.probe_size, len(self.records)))
            self._probe = []
            self._probe_seen = len(picks)
            for i in picks:
                sample, _ = self.encode_one(self.records[i])
                if sample is not None:
                    self._probe.append(len(sample["input_ids"]))
        return self._probe

    @property
    def probe_seen(self) -> int:
        """Records the probe tokenized."""
        self.probe_lengths()
        return self._probe_seen

    def expected_samples(self) -> int:
        kept = self.probe_lengths()
        if not self.probe_seen:
            return 0
        if len(kept) == self.probe_seen:
            return len(self.records)
        return round(len(self.records) * len(kept) / self.probe_seen)

    def __len__(self) -> int:
        return self.expected_samples()
