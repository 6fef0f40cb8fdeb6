"""The fast mode beside the plain loop, row by row, from one store: docs/benchmarks.md's
"The fast mode on the Tuners table".

    python bench/fast_mode_table.py bench/results/2026-12-06-h200/tuners_fast_plain.db
    python bench/fast_mode_table.py STORE --recipe tuners --plain bench --fast fast

A row is paired by name across the two profiles (the newest record of each). The speed-up is
fast tokens/s over plain tokens/s, both over timed optimizer steps; "at ≤ memory" says whether
the fast row peaked at no more allocated memory than the plain one. Each fast row's switches
(and the ones it refused, with the reason) come from its recorded config.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path


def newest(db: Path, recipe: str, profile: str) -> dict[str, dict]:
    """{row name: record} of the newest record of each row of ``recipe`` under ``profile``."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM runs WHERE id IN (SELECT MAX(id) FROM runs WHERE recipe = ? AND profile = ?"
                            " GROUP BY row)", (recipe, profile)).fetchall()
    out = {}
    for r in rows:
        out[r["row"]] = {"status": r["status"], "reason": r["reason"], "metrics": json.loads(r["metrics"] or "{}"),
                         "config": json.loads(r["config"] or "{}"), "environment": json.loads(r["environment"] or "{}")}
    return out


def peak_allocated(metrics: dict) -> float | None:
    mem = metrics.get("memory") or []
    values = [m["peak_allocated_gib"] for m in mem if m.get("peak_allocated_gib") is not None]
    return max(values) if values else None


def pairs(db: Path, recipe: str = "tuners", plain: str = "bench", fast: str = "fast") -> list[dict]:
    """One entry per row present in both profiles, in the fast profile's order of rows."""
    a, b = newest(db, recipe, plain), newest(db, recipe, fast)
    entries = []
    for name in [n for n in b if n in a]:
        p, f = a[name], b[name]
        entry = {"row": name, "plain_status": p["status"], "fast_status": f["status"],
                 "plain_reason": p["reason"], "fast_reason": f["reason"],
                 "switches": (f["config"].get("fast_mode") or {}).get("added", []),
                 "refused": (f["config"].get("fast_mode") or {}).get("refused", {}),
                 "device": f["environment"].get("device_name") or p["environment"].get("device_name")}
        if p["status"] == "ok" and f["status"] == "ok":
            pm, fm = p["metrics"], f["metrics"]
            entry.update(plain_tokens_s=pm["tokens_per_s"], fast_tokens_s=fm["tokens_per_s"],
                         plain_alloc=peak_allocated(pm), fast_alloc=peak_allocated(fm),
                         plain_held=pm.get("held_before_gib"), fast_held=fm.get("held_before_gib"),
                         isolated=pm.get("isolation") == "process" and fm.get("isolation") == "process")
            entry["speedup"] = entry["fast_tokens_s"] / entry["plain_tokens_s"]
            if entry["plain_alloc"] is not None and entry["fast_alloc"] is not None:
                entry["at_most_memory"] = entry["fast_alloc"] <= entry["plain_alloc"]
        entries.append(entry)
    return entries


def render(entries: list[dict]) -> str:
    lines = ["| row | plain tokens/s | fast tokens/s | speed-up | plain allocated GiB | fast allocated GiB "
             "| at ≤ memory | switches the fast row took | refused |",
             "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for e in entries:
        refused = "; ".join(f"{k}: {v}" for k, v in e["refused"].items()) or "-"
        switches = "+".join(e["switches"]) or "-"
        if "speedup" not in e:
            why = "; ".join(f"{side}: {e[side + '_status']} {e[side + '_reason'] or ''}".strip()
                            for side in ("plain", "fast") if e[side + "_status"] != "ok")
            lines.append(f"| {e['row']} | | | {why} | | | | {switches} | {refused} |")
            continue
        alloc = [f"{e[k]:.2f}" if e.get(k) is not None else "-" for k in ("plain_alloc", "fast_alloc")]
        at_most = {True: "yes", False: "no"}.get(e.get("at_most_memory"), "-")
        lines.append(f"| {e['row']} | {e['plain_tokens_s']:,.0f} | {e['fast_tokens_s']:,.0f} | "
                     f"{e['speedup']:.2f}× | {alloc[0]} | {alloc[1]} | {at_most} | {switches} | {refused} |")
    ok = [e for e in entries if "speedup" in e]
    if ok:
        held = [e["row"] for e in ok if max(e.get("plain_held") or 0, e.get("fast_held") or 0) > 0.1]
        devices = sorted({e["device"] for e in ok if e["device"]})
        lines.append("")
        lines.append(f"_{len(ok)} rows on {', '.join(devices) or 'an unnamed device'}; "
                     f"{sum(e.get('at_most_memory') is True for e in ok)} fast at no more allocated memory; "
                     f"speed-up from {min(e['speedup'] for e in ok):.2f}× to {max(e['speedup'] for e in ok):.2f}×"
                     + ("; every row in a process of its own" if all(e["isolated"] for e in ok) else "")
                     + (f"; memory an earlier row left allocated is in the peaks of: {', '.join(held)}" if held else "")
                     + "._")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path)
    parser.add_argument("--recipe", default="tuners")
    parser.add_argument("--plain", default="bench", help="the profile of the plain rows")
    parser.add_argument("--fast", default="fast", help="the profile of the fast rows")
    args = parser.parse_args(argv)
    print(render(pairs(args.db, args.recipe, args.plain, args.fast)))


if __name__ == "__main__":
    main()
