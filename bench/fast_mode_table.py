"""The fast mode beside the plain loop, row by row, from one store: docs/benchmarks.md's
"The fast mode on the Tuners table".

    python bench/fast_mode_table.py bench/results/2026-12-06-h200/tuners_fast_plain.db
    python bench/fast_mode_table.py STORE --recipe tuners --plain bench --fast fast

A row is paired by name and card across the two profiles (a row run plain on one card and
fast on another is listed once per card, never paired). A row measured more than once in a profile
(a later call repeating the plain rows with decoding speed, say) keeps every measurement:
the speed-up is taken against the plain row's fastest run and the fast row's slowest, so a
spread between runs can only lower it, and the table shows the spread. Both speeds are over
timed optimizer steps; "at ≤ memory" says whether the fast row peaked at no more allocated
memory than the plain one. Each fast row's switches (and the ones it refused, with the
reason) come from its newest recorded config. A row measured in one profile only is listed
with the other side "not run".
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path


def records(db: Path, recipe: str, profile: str) -> dict[str, list[dict]]:
    """{row name: its records under ``profile``, oldest first}, rows in order of first record."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM runs WHERE recipe = ? AND profile = ? ORDER BY id",
                            (recipe, profile)).fetchall()
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["row"], []).append({
            "status": r["status"], "reason": r["reason"], "metrics": json.loads(r["metrics"] or "{}"),
            "config": json.loads(r["config"] or "{}"), "environment": json.loads(r["environment"] or "{}")})
    return out


def peak_allocated(metrics: dict) -> float | None:
    mem = metrics.get("memory") or []
    values = [m["peak_allocated_gib"] for m in mem if m.get("peak_allocated_gib") is not None]
    return max(values) if values else None


def mfu_pct(record: dict) -> float | None:
    """MFU of a GPU record against its device's practical matmul rate: recorded by rows since
    2026-12-06, worked out from the record's config for earlier ones (tunerkit.estimate)."""
    m = record["metrics"]
    if m.get("mfu_pct") is not None:
        return m["mfu_pct"]
    device = record["environment"].get("device_name") or ""
    if (m.get("memory") or [{}])[0].get("device") != "cuda" or not device:
        return None
    from tunerkit.estimate import utilisation
    from tunerkit.estimate_cli import row_of

    try:
        return utilisation(row_of(record["config"]), m.get("tokens_per_s_per_gpu") or m["tokens_per_s"],
                           device).get("mfu_pct")
    except Exception:  # noqa: BLE001 - a config the estimate cannot read leaves the cell empty
        return None


def _side(recs: list[dict] | None, pick) -> dict:
    """One profile's view of a row: status and reason of the newest record, speeds of every ok one."""
    if not recs:
        return {"status": "not run", "reason": None, "config": {}, "environment": {}}
    ok = [r for r in recs if r["status"] == "ok" and r["metrics"].get("tokens_per_s")]
    chosen = pick(ok, key=lambda r: r["metrics"]["tokens_per_s"]) if ok else recs[-1]
    side = {"status": chosen["status"], "reason": chosen["reason"], "config": recs[-1]["config"],
            "environment": chosen["environment"]}
    if ok:
        m = chosen["metrics"]
        side.update(tokens_s=m["tokens_per_s"], runs=[r["metrics"]["tokens_per_s"] for r in ok],
                    mfu=mfu_pct(chosen),
                    alloc=max((a for a in (peak_allocated(r["metrics"]) for r in ok) if a is not None), default=None),
                    held=max((r["metrics"].get("held_before_gib") or 0) for r in ok),
                    isolated=all(r["metrics"].get("isolation") == "process" for r in ok))
    return side


def card(record: dict) -> str:
    return record["environment"].get("device_name") or "an unnamed device"


def pairs(db: Path, recipe: str = "tuners", plain: str = "bench", fast: str = "fast") -> list[dict]:
    """One entry per row and card measured in either profile: the fast profile's rows first, in
    its order. Runs on different cards are never paired: a row whose plain run was on one card
    and fast run on another gives two entries, each with its other side "not run"."""
    a, b = records(db, recipe, plain), records(db, recipe, fast)
    keys = []
    for recs in (b, a):
        for name, rs in recs.items():
            for r in rs:
                if (name, card(r)) not in keys:
                    keys.append((name, card(r)))
    entries = []
    for name, device in keys:
        on_card = lambda recs: [r for r in recs.get(name, []) if card(r) == device]  # noqa: E731
        p, f = _side(on_card(a), max), _side(on_card(b), min)
        entry = {"row": name, "plain_status": p["status"], "fast_status": f["status"],
                 "plain_reason": p["reason"], "fast_reason": f["reason"],
                 "switches": (f["config"].get("fast_mode") or {}).get("added", []),
                 "refused": (f["config"].get("fast_mode") or {}).get("refused", {}),
                 "device": device}
        if "tokens_s" in p and "tokens_s" in f:
            entry.update(plain_tokens_s=p["tokens_s"], fast_tokens_s=f["tokens_s"],
                         plain_runs=p["runs"], fast_runs=f["runs"],
                         plain_alloc=p["alloc"], fast_alloc=f["alloc"], plain_mfu=p["mfu"], fast_mfu=f["mfu"],
                         plain_held=p["held"], fast_held=f["held"],
                         isolated=p["isolated"] and f["isolated"])
            entry["speedup"] = entry["fast_tokens_s"] / entry["plain_tokens_s"]
            if entry["plain_alloc"] is not None and entry["fast_alloc"] is not None:
                entry["at_most_memory"] = entry["fast_alloc"] <= entry["plain_alloc"]
        entries.append(entry)
    return entries


def short_card(device: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "H100": the card's model, enough to tell the rows apart."""
    words = [w for w in device.split() if w.upper() != "NVIDIA"]
    return words[0] if words else device


def _speed(value: float, runs: list[float]) -> str:
    if len(runs) < 2:
        return f"{value:,.0f}"
    return f"{value:,.0f} ({len(runs)} runs: {min(runs):,.0f}–{max(runs):,.0f})"


def _why(status: str, reason: str | None) -> str:
    reason = (reason or "").strip()
    if reason.startswith(status):  # the store's reasons often begin with their status
        return reason
    return f"{status} {reason}".strip()


def render(entries: list[dict]) -> str:
    lines = ["| row | card | plain tokens/s (fastest run) | fast tokens/s (slowest run) | speed-up | plain allocated GiB "
             "| fast allocated GiB | at ≤ memory | MFU % plain → fast | switches the fast row took | refused |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---|---|"]
    for e in entries:
        refused = "; ".join(f"{k}: {v}" for k, v in e["refused"].items()) or "-"
        switches = "+".join(e["switches"]) or "-"
        if "speedup" not in e:
            why = "; ".join(f"{side}: {_why(e[side + '_status'], e[side + '_reason'])}"
                            for side in ("plain", "fast") if e[side + "_status"] != "ok")
            lines.append(f"| {e['row']} | {short_card(e['device'])} | | | {why} | | | | | {switches} | {refused} |")
            continue
        alloc = [f"{e[k]:.2f}" if e.get(k) is not None else "-" for k in ("plain_alloc", "fast_alloc")]
        at_most = {True: "yes", False: "no"}.get(e.get("at_most_memory"), "-")
        mfu = " → ".join("-" if e.get(k) is None else f"{e[k]:.1f}" for k in ("plain_mfu", "fast_mfu"))
        lines.append(f"| {e['row']} | {short_card(e['device'])} | {_speed(e['plain_tokens_s'], e['plain_runs'])} | "
                     f"{_speed(e['fast_tokens_s'], e['fast_runs'])} | "
                     f"{e['speedup']:.2f}× | {alloc[0]} | {alloc[1]} | {at_most} | {mfu} | {switches} | {refused} |")
    ok = [e for e in entries if "speedup" in e]
    if ok:
        held = [e["row"] for e in ok if max(e.get("plain_held") or 0, e.get("fast_held") or 0) > 0.1]
        devices = sorted({e["device"] for e in ok if e["device"]})
        lines.append("")
        lines.append(f"_{len(ok)} rows on {', '.join(devices) or 'an unnamed device'}; "
                     f"{sum(e.get('at_most_memory') is True for e in ok)} fast at no more allocated memory; "
                     f"speed-up from {min(e['speedup'] for e in ok):.2f}× to {max(e['speedup'] for e in ok):.2f}×"
                     " (fast's slowest run over plain's fastest)"
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
