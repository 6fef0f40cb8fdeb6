"""Predicted against measured peak allocated memory and tokens/s for every GPU row of the
committed stores: the error table of docs/performance.md ("Predicting memory and speed").

    python bench/estimate_error.py                      # every store under bench/results/
    python bench/estimate_error.py path/to/tunerkit.db  # one store
    python bench/estimate_error.py --spread             # the same row measured more than once

Each row is predicted for the device its record names (``tunerkit estimate --db`` does
the same for one store); rows measured on a CPU are left out, and a record that a store
started from another (``TABLES_SEED``) holds again is listed once, under the first store. ``--spread`` sets the error
beside the measurement's own reproducibility: every GPU configuration recorded more than
once across the stores (settings that do not change a micro-batch's work, such as the
accumulation, the token budget or the evaluations, left out of the comparison) with the
range of its tokens/s, on one card (runs on different cards are never one spread).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import defaultdict
from contextlib import closing
from pathlib import Path

from tunerkit.estimate import fit_note
from tunerkit.estimate_cli import compare, render, stored_rows

RESULTS = Path(__file__).resolve().parent / "results"


def newest_record(db: Path) -> float:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT COALESCE(MAX(started), 0) FROM runs").fetchone()[0]


def committed_stores() -> list[Path]:
    """Every store under bench/results/, a call's sub-folders included, in the order their last
    records were made: a store started from another comes after it, so a record both hold is
    listed under the store that measured it."""
    return sorted(RESULTS.rglob("*.db"), key=lambda db: (newest_record(db), str(db)))


def gpu_rows(db: Path) -> list[dict]:
    return [r for r in stored_rows(db) if r["on_gpu"]]


#: settings that change how long a row runs or what it does after training, not the work of
#: one micro-batch: records differing only in these measured the same configuration
NOT_THE_WORK = ("evaluate", "gradient_accumulation_steps", "token_budget", "max_steps", "timing_warmup_steps",
                "sdpa_kernels", "repeats", "isolation", "infer_backend", "infer_prompts", "infer_new_tokens")


def spread(stores: list[Path]) -> list[dict]:
    """Every GPU configuration measured more than once: its tokens/s, lowest to highest, and where."""
    groups: dict[tuple, dict[float, tuple[float, str]]] = defaultdict(dict)
    for db in stores:
        with closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("SELECT recipe, row, config, metrics, started, environment FROM runs"
                                " WHERE status = 'ok' ORDER BY id").fetchall()
        for recipe, row, config, metrics, started, environment in rows:
            m, cfg = json.loads(metrics or "{}"), json.loads(config or "{}")
            if ((m.get("memory") or [{}])[0].get("device") != "cuda") or not m.get("tokens_per_s"):
                continue
            settings = {k: v for k, v in (cfg.get("settings") or {}).items() if k not in NOT_THE_WORK}
            env = json.loads(environment or "{}")
            # runs on different cards are different measurements, never one configuration's spread
            key = (recipe, row, env.get("device_name"),
                   json.dumps([cfg.get("plugins"), cfg.get("options"), settings], sort_keys=True, default=str))
            # a store started from another holds that one's records again: one run, one start time
            host = env.get("host_op_us")  # recorded since 2026-12-06
            where = db.relative_to(RESULTS) if db.is_relative_to(RESULTS) else f"{db.parent.name}/{db.name}"
            groups[key].setdefault(started, (m["tokens_per_s"], str(where), host))
    out = []
    for (recipe, row, device, _), by_start in groups.items():
        runs = sorted(by_start.values(), key=lambda r: r[0])
        speeds = [t for t, _, _ in runs]
        if len(runs) > 1 and speeds[-1] > speeds[0]:
            out.append({"recipe": recipe, "row": row, "device": device, "tokens_per_s": speeds, "ratio": speeds[-1] / speeds[0],
                        "host_op_us": [h for _, _, h in runs], "stores": sorted({where for _, where, _ in runs})})
    return sorted(out, key=lambda e: -e["ratio"])


def render_spread(entries: list[dict]) -> str:
    lines = ["| recipe | row | card | tokens/s, each run | highest / lowest | host µs per op, each run | stores |",
             "|---|---|---|---|---:|---|---|"]
    for e in entries:
        host = ", ".join("-" if h is None else f"{h:.1f}" for h in e["host_op_us"])
        lines.append(f"| {e['recipe']} | {e['row']} | {e.get('device') or '?'} | {', '.join(f'{t:,.0f}' for t in e['tokens_per_s'])} | "
                     f"{e['ratio']:.2f} | {host} | {', '.join(e['stores'])} |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    if "--spread" in paths:
        named = [Path(p) for p in paths if p != "--spread"]
        print(render_spread(spread(named or committed_stores())))
        return
    stores = [Path(p) for p in paths] or committed_stores()
    memory, speed, hosts, seen = [], [], [], set()
    for db in stores:
        records = [r for r in gpu_rows(db) if (r["recipe"], r["row"], r["profile"], r["started"]) not in seen]
        seen.update((r["recipe"], r["row"], r["profile"], r["started"]) for r in records)
        entries = compare(records)
        hosts += [e["speed_error"] for e in entries if e.get("host_op_us") and e.get("speed_error") is not None]
        if not entries:
            continue
        devices = sorted({e["device"] or "?" for e in entries})
        print(f"\n### {db.relative_to(RESULTS.parent.parent) if db.is_relative_to(RESULTS.parent.parent) else db}"
              f" ({', '.join(devices)})\n")
        print(render(entries))
        memory += [e["memory_error"] for e in entries if e.get("memory_error") is not None]
        speed += [e["speed_error"] for e in entries if e.get("speed_error") is not None]
    print(f"\npeak allocated memory: {fit_note(memory, 0.10)}; tokens/s: {fit_note(speed, 0.25)}"
          f" (rows that recorded their host's speed: {fit_note(hosts, 0.25)})")


if __name__ == "__main__":
    main(sys.argv[1:])
