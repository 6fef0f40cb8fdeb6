"""Predicted against measured peak allocated memory and tokens/s for every GPU row of the
committed stores: the error table of docs/performance.md ("Predicting memory and speed").

    python bench/estimate_error.py                      # every bench/results/*/*.db
    python bench/estimate_error.py path/to/tunerkit.db  # one store

Each row is predicted for the device its record names (``tunerkit estimate --db`` does
the same for one store); rows measured on a CPU are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunerkit.estimate import fit_note
from tunerkit.estimate_cli import compare, render, stored_rows

RESULTS = Path(__file__).resolve().parent / "results"


def gpu_rows(db: Path) -> list[dict]:
    return [r for r in stored_rows(db) if r["on_gpu"]]


def main(paths: list[str]) -> None:
    stores = [Path(p) for p in paths] or sorted(RESULTS.glob("*/*.db"))
    memory, speed = [], []
    for db in stores:
        entries = compare(gpu_rows(db))
        if not entries:
            continue
        devices = sorted({e["device"] or "?" for e in entries})
        print(f"\n### {db.relative_to(RESULTS.parent.parent) if db.is_relative_to(RESULTS.parent.parent) else db}"
              f" ({', '.join(devices)})\n")
        print(render(entries))
        memory += [e["memory_error"] for e in entries if e.get("memory_error") is not None]
        speed += [e["speed_error"] for e in entries if e.get("speed_error") is not None]
    print(f"\npeak allocated memory: {fit_note(memory, 0.10)}; tokens/s: {fit_note(speed, 0.25)}")


if __name__ == "__main__":
    main(sys.argv[1:])
