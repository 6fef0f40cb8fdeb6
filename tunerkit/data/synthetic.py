"""Synthetic token data for speed and memory measurements.

Lengths follow a named distribution (lognormal with the given mean and standard
deviation, clamped to [min, max]); token ids are uniform. Deterministic by seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LengthStats:
    mean: float
    sd: float
    min: int
    max: int
    rows: int
    source: str


#: Token statistics the seed published for its datasets (Qwen tokenizer).
DISTRIBUTIONS = {
    # Benchmark.md: "3234.4±2547.5, min=91, max=19548"
    "cls-fudan-news-zh": LengthStats(3234.4, 2547.5, 91, 19548, 2000, "seed Benchmark.md, parameter settings"),
    # Benchmark.md, Sequence Parallel table: "8055 tokens * 12000 rows" (no spread published: fixed length)
    "long-alpaca-12k": LengthStats(8055, 0.0, 8055, 8055, 12000, "seed Benchmark.md, Sequence Parallel table"),
}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``synthetic:lengths?dist=long-alpaca-12k&rows=500`` -> ("lengths", {...})."""
    body = spec.split(":", 1)[1]
    name, _, query = body.partition("?")
    params = dict(kv.split("=", 1) for kv in query.split("&") if kv)
    return name, params


def sample_lengths(stats: LengthStats, n: int, rng: np.random.Generator) -> np.ndarray:
    if stats.sd == 0:
        return np.full(n, int(stats.mean), dtype=np.int64)
    # Lognormal with the requested mean and sd: sigma^2 = ln(1 + sd^2/mean^2).
    sigma2 = math.log1p((stats.sd / stats.mean) ** 2)
    mu = math.log(stats.mean) - sigma2 / 2
    lengths = rng.lognormal(mu, math.sqrt(sigma2), size=n)
    return np.clip(np.round(lengths), stats.min, stats.max).astype(np.int64)


def synthetic_records(spec: str, vocab_size: int, seed: int) -> list[dict]:
    name, params = parse_spec(spec)
    if name != "lengths":
        raise ValueError(f"unknown synthetic dataset '{name}' (known: lengths)")
    base = DISTRIBUTIONS[params.get("dist", "cls-fudan-news-zh")]
    stats = LengthStats(float(params.get("mean", base.mean)), float(params.get("sd", base.sd)),
                        int(params.get("min", base.min)), int(params.get("max", base.max)),
                        int(params.get("rows", base.rows)), base.source)
    rng = np.random.default_rng(seed)
    lengths = sample_lengths(stats, stats.rows, rng)
    records = []
    for n in lengths:
        ids = rng.integers(10, vocab_size, size=int(n)).tolist()
        records.append({"input_ids": ids, "labels": list(ids)})
    return records
