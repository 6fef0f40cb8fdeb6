"""Where training records come from: builtin tasks, synthetic lengths, local files, registry names."""

from __future__ import annotations

import random
from pathlib import Path

from tunerkit.errors import UserError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
BUILTIN_ROWS = 256  # rows a builtin task yields when max_train_samples is not set


def kind_of(spec: str) -> str:
    if spec.startswith("builtin:"):
        return "builtin"
    if spec.startswith("synthetic:"):
        return "synthetic"
    if spec.endswith(DATA_SUFFIXES) or spec.startswith(("/", "./", "../", "~")) or Path(spec).exists():
        return "file"
    return "registry"


def check_source(spec: str, key: str) -> None:
    """Fail early, in one line, for a dataset that cannot be found."""
    kind = kind_of(spec)
    if kind == "builtin":
        from tunerkit.data.builtin import TASKS

        name = spec.split(":", 1)[1]
        if name not in TASKS:
            raise UserError(f"unknown builtin dataset '{name}'", key=key, hint=f"known: {', '.join(TASKS)}")
    elif kind == "synthetic":
        from tunerkit.data.synthetic import DISTRIBUTIONS, resolve_stats

        try:
            resolve_stats(spec)
        except ValueError as err:
            raise UserError(f"bad synthetic dataset '{spec}': {err}", key=key,
                            hint=f"synthetic:lengths?dist=NAME&rows=N with NAME one of {', '.join(DISTRIBUTIONS)}") from None
    elif kind == "file":
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(f"dataset file not found: {spec}", key=key, hint="check the path (relative to where you run tunerkit)")
        if path.suffix not in DATA_SUFFIXES:
            raise UserError(f"unsupported data file type '{path.suffix}'", key=key, hint="use .jsonl, .json or .parquet")
    else:
        from tunerkit.data import registry

        registry.check_name(spec, key)


def load_records(spec: str, *, seed: int, vocab_size: int, rows: int | None) -> list[dict]:
    kind = kind_of(spec)
    if kind == "builtin":
        from tunerkit.data.builtin import TASKS

        return TASKS[spec.split(":", 1)[1]]["train"](rows or BUILTIN_ROWS, seed)
    if kind == "synthetic":
        from tunerkit.data.synthetic import synthetic_records

        return synthetic_records(spec, vocab_size, seed)
    if kind == "file":
        from tunerkit.data.formats import check_vocabulary, read_records

        records = read_records(Path(spec).expanduser())
        check_vocabulary(records, vocab_size, spec)
        return records
    from tunerkit.data import registry

    return registry.load(spec)


def split_off(records: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out): ``n`` rows chosen by seed, the same for every row of a recipe."""
    if n <= 0:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def mix_in(train: list[dict], general: list[dict], ratio: float, seed: int) -> list[dict]:
    """Append int(len(train) * ratio) rows sampled from ``general`` (ms-swift's ms-bench mixing)."""
    k = int(len(train) * ratio)
    if k <= 0 or not general:
        return train
    rng = random.Random(seed)
    picks = [general[rng.randrange(len(general))] for _ in range(k)] if k > len(general) else rng.sample(general, k)
    return train + picks
