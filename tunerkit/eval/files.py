"""Finding and reading benchmark files that users bring in the public schemas.

A task folder (``<eval_data_dir>/gsm8k``, ``.../arc``, ``.../ceval``) holds files in
JSON Lines, JSON (a list of records), CSV or Parquet. A file belongs to a split when the
split's name (or an alias: ``val``/``validation``, ``dev``) is one of the words of its
path below the task folder, so the official layouts and the hub's layouts both work:
``test.jsonl``, ``ARC-Challenge-Test.jsonl``, ``ARC-Challenge/test-00000-of-00001.parquet``,
``val/computer_network_val.csv``, ``computer_network/val-00000-of-00001.parquet``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from tunerkit.errors import UserError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ALIASES = {"val": ("val", "validation"), "validation": ("val", "validation"), "dev": ("dev",),
           "train": ("train",), "test": ("test",)}


def path_words(path: Path, root: Path) -> list[str]:
    """Lower-case words of ``path`` below ``root`` (split on / - _ . and spaces), suffix dropped."""
    rel = path.relative_to(root).with_suffix("")
    return [w for w in re.split(r"[/\\\-_. ]+", str(rel).lower()) if w]


def split_files(task_dir: Path, split: str) -> list[Path]:
    """Data files of ``split`` under ``task_dir``, sorted."""
    if not task_dir.is_dir():
        return []
    names = ALIASES.get(split, (split,))
    found = [p for p in task_dir.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
             and any(n in path_words(p, task_dir) for n in names)]
    return sorted(found)


def read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, list) else list(data.get("data", []))
        if suffix == ".csv":
            with path.open(encoding="utf-8-sig", newline="") as fh:
                return list(csv.DictReader(fh))
        if suffix == ".parquet":
            try:
                import pandas as pd
            except ImportError:
                raise UserError(f"reading {path} needs pandas and pyarrow", hint="pip install pandas pyarrow") from None
            return _plain(pd.read_parquet(path).to_dict(orient="records"))
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}", hint="JSON Lines, JSON list, CSV or Parquet in the public schema") from None
    raise UserError(f"unsupported file type {path.suffix}", hint=f"one of {', '.join(SUFFIXES)}")


def _plain(value):
    """numpy arrays and scalars from Parquet as lists and Python scalars."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return value


def task_dir(data_dir: str | Path | None, task: str) -> Path:
    if data_dir is None:
        raise UserError(f"the {task} evaluator needs local data files", key="eval_data_dir",
                        hint=f"set eval_data_dir to a folder with a {task}/ subfolder (see docs/evaluation.md)")
    folder = Path(data_dir).expanduser() / task
    if not folder.is_dir():
        raise UserError(f"no folder {folder}", key="eval_data_dir",
                        hint=f"put the {task} files under {folder} (see docs/evaluation.md)")
    return folder


def interleave(groups: dict[str, list], limit: int | None) -> dict[str, list]:
    """At most ``limit`` items in all, taken round-robin so every group stays represented."""
    if limit is None:
        return groups
    kept: dict[str, list] = {name: [] for name in groups}
    depth, total = 0, 0
    while total < limit and any(depth < len(items) for items in groups.values()):
        for name, items in groups.items():
            if depth < len(items) and total < limit:
                kept[name].append(items[depth])
                total += 1
        depth += 1
    return {name: items for name, items in kept.items() if items}


def weighted_summary(per_group: dict[str, tuple[int, int]]) -> tuple[float, float]:
    """(accuracy weighted by group size, unweighted mean of group accuracies) from ``{name: (correct, total)}``.

    The weighted figure is ms-swift's "weighted acc": every item counts once.
    """
    groups = [(c, n) for c, n in per_group.values() if n > 0]
    if not groups:
        return 0.0, 0.0
    weighted = sum(c for c, _ in groups) / sum(n for _, n in groups)
    macro = sum(c / n for c, n in groups) / len(groups)
    return weighted, macro


def metric_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
