"""Synthetic token data for speed and memory measurements.

Lengths follow a named distribution (a lognormal clamped to [min, max] whose clamped mean
and standard deviation are the published ones); token ids are uniform. Deterministic by
seed: the same spec and seed give the same records on every machine.

``synthetic:lengths?dist=NAME&rows=N&mean=M&sd=S&min=A&max=B`` (every parameter optional;
``dist`` defaults to cls-fudan-news-zh).
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


#: Token statistics ms-swift published for its datasets (Qwen tokenizer).
DISTRIBUTIONS = {
    # Benchmark.md: "3234.4±2547.5, min=91, max=19548"
    "cls-fudan-news-zh": LengthStats(3234.4, 2547.5, 91, 19548, 2000, "ms-swift Benchmark.md, parameter settings"),
    # Benchmark.md, Sequence Parallel table: "8055 tokens * 12000 rows" (no spread published: fixed length)
    "long-alpaca-12k": LengthStats(8055, 0.0, 8055, 8055, 12000, "ms-swift Benchmark.md, Sequence Parallel table"),
}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``synthetic:lengths?dist=long-alpaca-12k&rows=500`` -> ("lengths", {...})."""
    body = spec.split(":", 1)[1]
    name, _, query = body.partition("?")
    params = dict(kv.split("=", 1) for kv in query.split("&") if kv)
    return name, params


def _clamped_moments(mu: float, sigma: float, lo: float, hi: float) -> tuple[float, float]:
    """Mean and sd of a lognormal(mu, sigma) clamped to [lo, hi], in closed form."""
    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    a, b = math.log(lo), math.log(hi)
    moments = []
    for k in (1, 2):
        inside = math.exp(k * mu + k * k * sigma * sigma / 2) * (
            cdf((b - mu - k * sigma * sigma) / sigma) - cdf((a - mu - k * sigma * sigma) / sigma))
        moments.append(lo ** k * cdf((a - mu) / sigma) + inside + hi ** k * (1 - cdf((b - mu) / sigma)))
    mean, second = moments
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def lognormal_params(stats: LengthStats) -> tuple[float, float]:
    """(mu, sigma) whose lognormal, once clamped to [min, max], has the published mean and sd.

    The published statistics describe the real data, which already lies inside [min, max];
    a plain lognormal with that mean and sd would lose mean and spread to the clamp, so the
    unclamped targets are corrected until the clamped moments match.
    """
    def params(mean: float, sd: float) -> tuple[float, float]:
        sigma2 = math.log1p((sd / mean) ** 2)
        return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)

    plain = params(stats.mean, stats.sd)
    # The widest spread any distribution on [min, max] with this mean can have; beyond it
    # (e.g. a small max given by hand) the targets hold before clamping only.
    if stats.sd >= 0.98 * math.sqrt((stats.mean - stats.min) * (stats.max - stats.mean)):
        return plain
    mean_u, sd_u = stats.mean, stats.sd
    for _ in range(100):
        mu, sigma = params(mean_u, sd_u)
        mean_c, sd_c = _clamped_moments(mu, sigma, stats.min, stats.max)
        if abs(mean_c - stats.mean) < 1e-6 * stats.mean and abs(sd_c - stats.sd) < 1e-6 * stats.sd:
            return mu, sigma
        mean_u += stats.mean - mean_c
        sd_u *= stats.sd / max(sd_c, 1e-9)
        if not (mean_u > 0 and math.isfinite(sd_u)):
            break
    return plain


def sample_lengths(stats: LengthStats, n: int, rng: np.random.Generator) -> np.ndarray:
    if stats.sd == 0:
        return np.full(n, int(stats.mean), dtype=np.int64)
    mu, sigma = lognormal_params(stats)
    lengths = rng.lognormal(mu, sigma, size=n)
    return np.clip(np.round(lengths), stats.min, stats.max).astype(np.int64)


PARAMS = ("dist", "rows", "mean", "sd", "min", "max")


def resolve_stats(spec: str) -> LengthStats:
    """The length statistics a ``synthetic:lengths?...`` spec asks for; ValueError if it is wrong."""
    name, params = parse_spec(spec)
    if name != "lengths":
        raise ValueError(f"unknown synthetic dataset '{name}' (known: lengths)")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(PARAMS)})")
    dist = params.get("dist", "cls-fudan-news-zh")
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution '{dist}' (known: {', '.join(DISTRIBUTIONS)})")
    base = DISTRIBUTIONS[dist]
    try:
        stats = LengthStats(float(params.get("mean", base.mean)), float(params.get("sd", base.sd)),
                            int(params.get("min", base.min)), int(params.get("max", base.max)),
                            int(params.get("rows", base.rows)), base.source)
    except ValueError:
        raise ValueError(f"parameters of '{spec}' must be numbers") from None
    if not (1 <= stats.min <= stats.mean <= stats.max) or stats.sd < 0 or stats.rows < 1:
        raise ValueError("need 1 <= min <= mean <= max, sd >= 0 and rows >= 1")
    return stats


def synthetic_records(spec: str, vocab_size: int, seed: int) -> list[dict]:
    """``rows`` records of uniform random token ids (loss on every token), lengths as the spec says."""
    stats = resolve_stats(spec)
    rng = np.random.default_rng(seed)
    lengths = sample_lengths(stats, stats.rows, rng)
    records = []
    for n in lengths:
        ids = rng.integers(10, vocab_size, size=int(n)).tolist()
        records.append({"input_ids": ids, "labels": list(ids)})
    return records
