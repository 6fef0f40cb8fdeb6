"""max_length handling: delete (the seed's default), or cut from the left or right."""

from __future__ import annotations


def apply_truncation(records, max_length: int, strategy: str) -> tuple[list[dict], dict[str, int]]:
    kept, dropped, truncated = [], 0, 0
    for r in records:
        n = len(r["input_ids"])
        if n <= max_length:
            kept.append(r)
            continue
        if strategy == "delete":
            dropped += 1
            continue
        truncated += 1
        cut = slice(n - max_length, n) if strategy == "truncation_left" else slice(0, max_length)
        kept.append({**r, "input_ids": r["input_ids"][cut], "labels": r["labels"][cut]})
    return kept, {"samples_dropped": dropped, "samples_truncated": truncated}
