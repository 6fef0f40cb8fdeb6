"""The results database: SQLite, one record per (recipe, row, profile, repeat), one transaction each."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipe TEXT NOT NULL,
    row TEXT NOT NULL,
    profile TEXT,
    repeat INTEGER NOT NULL DEFAULT 0,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'pending')),
    reason TEXT,
    metrics TEXT NOT NULL,
    environment TEXT NOT NULL,
    reference TEXT,
    started REAL NOT NULL,
    finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_lookup ON runs (recipe, row, profile, repeat, config_hash);
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60)
        conn.executescript(SCHEMA)
        return conn

    def record(self, *, recipe: str, row, repeat: int, status: str, reason: str | None, metrics: dict,
               environment: dict, started: float) -> None:
        payload = (recipe, row.name, row.profile, repeat, row.config_hash(), json.dumps(row.config(), default=str),
                   status, reason, json.dumps(metrics, default=_jsonable), json.dumps(environment, default=str),
                   json.dumps(row.reference), started, time.time())
        with closing(self._connect()) as conn, conn:  # one transaction per row
            conn.execute("INSERT INTO runs (recipe, row, profile, repeat, config_hash, config, status, reason,"
                         " metrics, environment, reference, started, finished)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", payload)

    def done(self, *, recipe: str, row, repeat: int) -> bool:
        """True when this row, with an identical config, already has a record."""
        if not self.path.exists():
            return False
        with closing(self._connect()) as conn:
            cur = conn.execute("SELECT 1 FROM runs WHERE recipe = ? AND row = ? AND profile IS ? AND repeat = ?"
                               " AND config_hash = ? LIMIT 1",
                               (recipe, row.name, row.profile, repeat, row.config_hash()))
            return cur.fetchone() is not None

    def latest(self, recipe: str | None = None, profile: str | None = None, any_profile: bool = True) -> list[dict]:
        """The newest record of every (recipe, row, profile, repeat), oldest row first."""
        if not self.path.exists():
            return []
        query = ("SELECT * FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY recipe, row, profile, repeat)")
        args: list = []
        if recipe is not None:
            query += " AND recipe = ?"
            args.append(recipe)
        if not any_profile:
            query += " AND profile IS ?"
            args.append(profile)
        query += " ORDER BY id"
        with closing(self._connect()) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute(query, args)]
        for r in rows:
            for key in ("config", "metrics", "environment", "reference"):
                r[key] = json.loads(r[key]) if r[key] else {}
        return rows


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
