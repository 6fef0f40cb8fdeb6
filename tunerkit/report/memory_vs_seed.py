"""How far a table's memory is from ms-swift's, per GPU, and where the gap comes from.

ms-swift published peak *reserved* memory per GPU (torch's caching allocator on its stack);
ours records both reserved and allocated per device. A row whose reserved memory is more
than ``TOLERANCE`` away from ms-swift's gets a reason the numbers themselves show:

- ``allocator``: above ms-swift's, and our reserved memory exceeds our allocated memory by
  more than ``TOLERANCE``: blocks the caching allocator held without live tensors in them
  (fragmentation or cache), not memory the row needed;
- ``allocation``: below ms-swift's, or reserved and allocated are close: the tensors
  themselves differ from ms-swift's (another model implementation, kernels or accounting).
"""

from __future__ import annotations

import statistics

from tunerkit.report.reference import resolve_reference

TOLERANCE = 0.15


def _largest(value) -> float | None:
    if isinstance(value, (list, tuple)):
        numbers = [v for v in value if isinstance(v, (int, float))]
        return max(numbers) if numbers else None
    return value if isinstance(value, (int, float)) else None


def _ours(record: dict, key: str) -> float | None:
    return _largest([e[key] for e in (record.get("metrics") or {}).get("memory") or [] if key in e])


def gaps(records: list[dict]) -> list[dict]:
    """Per ok row with both figures: ours and ms-swift's reserved GiB (largest GPU), allocated, gap."""
    out = []
    for r in records:
        if r.get("status") != "ok":
            continue
        seed = _largest(resolve_reference(r.get("reference"), r.get("config") or {}).get("memory_gib"))
        reserved, allocated = _ours(r, "peak_reserved_gib"), _ours(r, "peak_allocated_gib")
        if not seed or reserved is None or allocated is None:
            continue
        out.append({"row": r["row"], "seed": seed, "reserved": reserved, "allocated": allocated,
                    "gap": reserved / seed - 1})
    return out


def memory_note(records: list[dict]) -> str | None:
    """One note for a table: the median gap, its range, and each row beyond the tolerance with its reason."""
    found = gaps(records)
    if not found:
        return None
    values = [g["gap"] for g in found]
    text = (f"memory vs ms-swift's (peak reserved GiB of the largest GPU, ours / ms-swift's - 1): median "
            f"{statistics.median(values):+.0%}, from {min(values):+.0%} to {max(values):+.0%} over {len(found)} rows")
    far = [g for g in found if abs(g["gap"]) > TOLERANCE]
    if not far:
        return text + f"; every row within ±{TOLERANCE:.0%}"
    reasons = []
    for g in far:
        held = g["reserved"] - g["allocated"]
        why = "allocator" if g["gap"] > 0 and held > TOLERANCE * g["reserved"] else "allocation"
        reasons.append(f"{g['row']} {g['gap']:+.0%} ({why}: {g['reserved']:.1f} reserved, "
                       f"{g['allocated']:.1f} allocated, ms-swift {g['seed']:.1f})")
    return text + f"; beyond ±{TOLERANCE:.0%}: " + "; ".join(reasons)
