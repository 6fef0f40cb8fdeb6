"""The results database: SQLite, one record per (recipe, row, profile, repeat), one transaction each.

The file is opened and checked (:meth:`Store.check`) before the first row trains: a path
that cannot hold a database, a file that is not one, or one written by a newer tunerkit
is a one-line :class:`UserError`, never a traceback after an hour of training.
``PRAGMA user_version`` holds the schema version. Concurrent ``run --resume`` processes
claim a row in the ``claims`` table (one ``BEGIN IMMEDIATE`` transaction) before training
it, so no row is trained twice; a claim whose process has died is taken over.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from tunerkit.errors import UserError

#: 0: the unversioned schema (no claims table, no 'skipped' status); 1: claims, 'skipped'.
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipe TEXT NOT NULL,
    row TEXT NOT NULL,
    profile TEXT,
    repeat INTEGER NOT NULL DEFAULT 0,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'pending', 'skipped')),
    reason TEXT,
    metrics TEXT NOT NULL,
    environment TEXT NOT NULL,
    reference TEXT,
    started REAL NOT NULL,
    finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_lookup ON runs (recipe, row, profile, repeat, config_hash);
CREATE TABLE IF NOT EXISTS claims (
    recipe TEXT NOT NULL,
    row TEXT NOT NULL,
    profile TEXT NOT NULL DEFAULT '',
    repeat INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    claimed REAL NOT NULL,
    PRIMARY KEY (recipe, row, profile, repeat, config_hash)
);
"""

# Version 0 files allow no 'skipped' status: the runs table is rebuilt once, rows kept.
MIGRATE_0 = """
ALTER TABLE runs RENAME TO runs_v0;
DROP INDEX IF EXISTS runs_lookup;
""" + SCHEMA + """
INSERT INTO runs SELECT * FROM runs_v0;
DROP TABLE runs_v0;
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._checked = 0  # 1: checked readable, 2: checked writable and current

    def check(self, write: bool = True) -> "Store":
        """Create the folder, open the file, bring its schema to this version and prove it
        writable; a one-line :class:`UserError` (key ``--db``) when any of that fails.
        ``write=False`` (reports) only proves it a readable database of a known version."""
        hint = "give --db a writable path for a SQLite file (the default: runs/tunerkit.db)"
        if self.path.is_dir():
            raise UserError(f"'{self.path}' is a folder, not a database file", key="--db", hint=hint)
        try:
            if not write:
                with closing(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
                    self._known_version(conn)
                self._checked = max(self._checked, 1)
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=60, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")  # takes the write lock: proves the file writable
                self._migrate(conn)
                conn.execute("COMMIT")
            self._checked = 2
        except UserError:
            raise
        except (OSError, sqlite3.Error) as err:
            what = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"cannot use '{self.path}' as the results database: {what}", key="--db",
                            hint=hint) from None
        return self

    def _known_version(self, conn: sqlite3.Connection) -> int:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "file is not a database" here
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(f"'{self.path}' has schema version {version}; this tunerkit knows up to "
                            f"{SCHEMA_VERSION}", key="--db", hint="upgrade tunerkit, or give another --db")
        return version

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = self._known_version(conn)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == SCHEMA_VERSION:
            return
        for statement in (MIGRATE_0 if "runs" in tables else SCHEMA).split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connect(self, write: bool = True) -> sqlite3.Connection:
        if self._checked < (2 if write else 1):
            self.check(write)
        return sqlite3.connect(self.path, timeout=60)

    def record(self, *, recipe: str, row, repeat: int, status: str, reason: str | None, metrics: dict,
               environment: dict, started: float) -> None:
        payload = (recipe, row.name, row.profile, repeat, row.config_hash(), json.dumps(row.config(), default=str),
                   status, reason, json.dumps(finite(metrics), default=_jsonable, allow_nan=False), json.dumps(environment, default=str),
                   json.dumps(row.reference), started, time.time())
        with closing(self._connect()) as conn, conn:  # one transaction per row
            conn.execute("INSERT INTO runs (recipe, row, profile, repeat, config_hash, config, status, reason,"
                         " metrics, environment, reference, started, finished)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", payload)

    def done(self, *, recipe: str, row, repeat: int) -> bool:
        """True when this row, with an identical config, already has a record (a row skipped for a
        missing package has none: once the package is installed, --resume runs it)."""
        if not self.path.exists():
            return False
        with closing(self._connect()) as conn:
            cur = conn.execute("SELECT 1 FROM runs WHERE recipe = ? AND row = ? AND profile IS ? AND repeat = ?"
                               " AND config_hash = ? AND status != 'skipped' LIMIT 1",
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
        with closing(self._connect(write=False)) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute(query, args)]
        for r in rows:
            for key in ("config", "metrics", "environment", "reference"):
                r[key] = json.loads(r[key]) if r[key] else {}
        return rows

    # -- claims: concurrent --resume processes never train one row twice ------------------
    def claim(self, *, recipe: str, row, repeat: int) -> str | None:
        """Claim the row for this process; None when claimed, else who holds it (or "done")."""
        key = (recipe, row.name, row.profile or "", repeat, row.config_hash())
        me, host = os.getpid(), socket.gethostname()
        with closing(self._connect()) as conn:
            conn.isolation_level = None
            conn.execute("BEGIN IMMEDIATE")  # no other process reads or claims between check and claim
            try:
                if conn.execute("SELECT 1 FROM runs WHERE recipe = ? AND row = ? AND profile IS ? AND repeat = ?"
                                " AND config_hash = ? AND status != 'skipped' LIMIT 1", (recipe, row.name, row.profile, repeat,
                                                                 key[4])).fetchone():
                    return "done"
                held = conn.execute("SELECT pid, host FROM claims WHERE recipe = ? AND row = ? AND profile = ?"
                                    " AND repeat = ? AND config_hash = ?", key).fetchone()
                if held is not None and tuple(held) != (me, host) and _alive(*held):
                    return f"pid {held[0]} on {held[1]}"
                conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (*key, me, host, time.time()))
                return None
            finally:
                conn.execute("COMMIT")

    def release(self, *, recipe: str, row, repeat: int) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute("DELETE FROM claims WHERE recipe = ? AND row = ? AND profile = ? AND repeat = ?"
                         " AND config_hash = ? AND pid = ? AND host = ?",
                         (recipe, row.name, row.profile or "", repeat, row.config_hash(), os.getpid(),
                          socket.gethostname()))


def _alive(pid: int, host: str) -> bool:
    """Whether a claim's process still runs; one on another host is taken as alive."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def finite(value):
    """``value`` with every NaN or infinite float replaced by None: stored JSON stays JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return finite(value.item())
    return value


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
