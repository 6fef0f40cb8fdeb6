"""Best-fit-decreasing packing of whole samples into rows of at most ``capacity`` tokens.

A packed row is ``{"input_ids", "labels", "seq_lengths"}`` (the layout of trl's
``pack_dataset``): the samples' tokens back to back, and the length of each sample so the
collator can restart positions and confine attention per sample. Samples are never cut:
truncation happened before, under the row's ``truncation_strategy``.

Lists are packed all at once; an iterable (lazy tokenization) is packed in buffers of
``buffer_size`` samples, best fit inside each buffer.
"""

from __future__ import annotations

import bisect
import math
import random
from typing import Iterable, Iterator

from torch.utils.data import IterableDataset


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of total length <= ``capacity``.

    Longest first, each into the bin whose free space is the smallest that still fits it
    (a new bin when none does). Bins with equal free space are interchangeable, so the bin
    fills equal those of trl's segment-tree implementation.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # sorted (free space, bin index) of bins with room left
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample of {n} tokens does not fit rows of {capacity}")
        if n <= 0:
            continue
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            b, space = len(bins) - 1, capacity - n
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            space -= n
        if space > 0:
            bisect.insort(free, (space, b))
    return bins


def make_row(samples: list[dict]) -> dict:
    ids, labels = [], []
    for s in samples:
        ids += s["input_ids"]
        labels += s["labels"]
    return {"input_ids": ids, "labels": labels, "seq_lengths": [len(s["input_ids"]) for s in samples]}


def pack_samples(samples: list[dict], capacity: int) -> list[dict]:
    """Packed rows of ``samples`` (tokenized, each at most ``capacity`` long)."""
    bins = best_fit_decreasing([len(s["input_ids"]) for s in samples], capacity)
    return [make_row([samples[i] for i in b]) for b in bins]


def packing_stats(rows: list[dict], capacity: int) -> dict:
    tokens = sum(len(r["input_ids"]) for r in rows)
    samples = sum(len(r["seq_lengths"]) for r in rows)
    return {"packed_rows": len(rows), "packed_samples": samples,
            "packing_efficiency": tokens / (len(rows) * capacity) if rows else 0.0}


class StreamingPacker(IterableDataset):
    """Packs a stream of tokenized samples buffer by buffer (best fit within each buffer).

    Rows of a buffer come out in a seeded random order, different on every pass. The
    number of rows is unknown before packing: ``__len__`` is only offered when the source
    can estimate its lengths (see :meth:`estimate_rows`).
    """

    def __init__(self, source: Iterable[dict], capacity: int, buffer_size: int = 1000, seed: int = 0):
        self.source, self.capacity, self.buffer_size, self.seed = source, capacity, buffer_size, seed
        self.passes = 0
        self.rows_yielded = 0  # over all passes, for the packing efficiency
        self.tokens_yielded = 0
        self._estimate: int | None = None

    def _flush(self, buffer: list[dict], rng: random.Random) -> Iterator[dict]:
        rows = pack_samples(buffer, self.capacity)
        rng.shuffle(rows)
        for row in rows:
            self.rows_yielded += 1
            self.tokens_yielded += len(row["input_ids"])
            yield row

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(f"{self.seed}-pack-{self.passes}")
        self.passes += 1
        buffer: list[dict] = []
        for sample in self.source:
            buffer.append(sample)
            if len(buffer) >= self.buffer_size:
                yield from self._flush(buffer, rng)
                buffer = []
        if buffer:
            yield from self._flush(buffer, rng)

    def estimate_rows(self) -> int | None:
        """Rows per pass, estimated by packing the source's probe lengths (None if it has none)."""
        if self._estimate is None:
            probe = getattr(self.source, "probe_lengths", None)
            expected = getattr(self.source, "expected_samples", None)
            if probe is None or expected is None:
                return None
            lengths = probe()
            if not lengths:
                return None
            rows = len(best_fit_decreasing(lengths, self.capacity))
            self._estimate = max(1, math.ceil(rows * expected() / len(lengths)))
        return self._estimate

    def __len__(self) -> int:
        estimate = self.estimate_rows()
        if estimate is None:
            raise TypeError("the number of packed rows of this stream is unknown")
        return estimate
