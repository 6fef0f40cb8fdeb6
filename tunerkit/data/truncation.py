"""max_length handling: delete (ms-swift's default), or cut from the left or right."""

from __future__ import annotations

STRATEGIES = ("delete", "truncation_left", "truncation_right")


def deleted_over(max_length: int, strategy: str) -> int | None:
    """The length past which a sample is deleted outright (strategy "delete"), else None: the
    encoders skip the label work for such samples."""
    return max_length if strategy == "delete" else None


def truncate_one(record: dict, max_length: int, strategy: str) -> tuple[dict | None, str]:
    """(record kept or cut, or None when deleted; what happened: "kept", "truncated", "dropped")."""
    n = len(record["input_ids"])
    if n <= max_length:
        return record, "kept"
    if strategy == "delete":
        return None, "dropped"
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown truncation_strategy '{strategy}' (known: {', '.join(STRATEGIES)})")
    # truncation_left keeps the end of the sample (the answer); truncation_right keeps its start.
    cut = slice(n - max_length, n) if strategy == "truncation_left" else slice(0, max_length)
    return {**record, "input_ids": record["input_ids"][cut], "labels": record["labels"][cut]}, "truncated"


def apply_truncation(records, max_length: int, strategy: str) -> tuple[list[dict], dict[str, int]]:
    """Records that fit ``max_length`` and the counts ``samples_dropped``/``samples_truncated``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown truncation_strategy '{strategy}' (known: {', '.join(STRATEGIES)})")
    kept, counts = [], {"samples_dropped": 0, "samples_truncated": 0}
    for r in records:
        out, what = truncate_one(r, max_length, strategy)
        if out is not None:
            kept.append(out)
        if what != "kept":
            counts[f"samples_{what}"] += 1
    return kept, counts
