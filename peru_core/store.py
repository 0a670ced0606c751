"""The results store: SQLite (standard library), one row per (zoo content hash, spec, engine version, task).

Survives restarts; lives in ``$PERU_HOME`` (default ``~/.peru_studio``). Rows of one computation are written in
one transaction, so a process killed mid-sweep leaves either all rows of a spec or none; SQLite's journal
makes a killed write roll back. A changed checkpoint changes the zoo hash, and a change to the code that produces a
spec's numbers changes its engine version (:mod:`peru_core.engine`), so stale results are never returned; rows of
other specs stay valid. Concurrent writers (two browser sessions, a CLI sweep) are serialised by SQLite's lock with a
busy timeout.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from peru_core.engine import engine_version_of_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    zoo_hash TEXT NOT NULL,
    spec_key TEXT NOT NULL,
    engine TEXT NOT NULL,         -- peru_core.engine.engine_version of the spec when the row was computed
    task TEXT NOT NULL,
    accuracy REAL NOT NULL,
    extra TEXT NOT NULL,          -- JSON: params, bytes and other per-row figures
    created REAL NOT NULL,
    PRIMARY KEY (zoo_hash, spec_key, engine, task)
);
"""


def peru_home() -> Path:
    """The data folder: ``$PERU_HOME`` or ``~/.peru_studio`` (created on demand)."""
    home = Path(os.environ.get("PERU_HOME", Path.home() / ".peru_studio")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


class ResultsStore:
    """Per-task accuracies and figures keyed by (zoo content hash, spec key, task)."""

    def __init__(self, path: Optional[str | Path] = None) -> None:
        self.path = Path(path) if path else peru_home() / "results.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("BEGIN IMMEDIATE")
            cols = [r[1] for r in con.execute("PRAGMA table_info(results)")]
            if cols and "engine" not in cols:
                # rows from before engine versions: which code produced them is unknown, so they are recomputed
                con.execute("DROP TABLE results")
            con.execute(SCHEMA)
            con.execute("COMMIT")
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        # A fresh connection per call: safe across Streamlit threads; busy timeout serialises writers.
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout=60000")
        return con

    def get(self, zoo_hash: str, spec_key: str, tasks: Iterable[str], engine: Optional[str] = None
            ) -> Optional[list[dict]]:
        """All rows for the spec on these tasks computed by ``engine`` (default: the current engine version of the
        spec), or None when any task is missing (then recompute)."""
        tasks = list(tasks)
        engine = engine if engine is not None else engine_version_of_key(spec_key)
        con = self._connect()
        try:
            cur = con.execute("SELECT task, accuracy, extra FROM results WHERE zoo_hash=? AND spec_key=? AND engine=?",
                              (zoo_hash, spec_key, engine))
            found = {t: (a, json.loads(x)) for t, a, x in cur.fetchall()}
        finally:
            con.close()
        if any(t not in found for t in tasks):
            return None
        return [{"task": t, "accuracy": found[t][0], **found[t][1]} for t in tasks]

    def put(self, zoo_hash: str, spec_key: str, rows: list[dict], engine: Optional[str] = None) -> None:
        """Write all rows of one spec atomically (one transaction), keyed by ``engine`` (default: the current
        engine version of the spec); rows of older versions of the same spec are dropped."""
        engine = engine if engine is not None else engine_version_of_key(spec_key)
        now = time.time()
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM results WHERE zoo_hash=? AND spec_key=? AND engine<>?",
                        (zoo_hash, spec_key, engine))
            con.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(zoo_hash, spec_key, engine, r["task"], float(r["accuracy"]),
                  json.dumps({k: v for k, v in r.items() if k not in ("task", "accuracy")}), now) for r in rows])
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def frame(self, zoo_hash: str) -> pd.DataFrame:
        """Every stored row of a zoo computed by the current engine, as a tidy frame (one row per spec and task)."""
        con = self._connect()
        try:
            df = pd.read_sql_query(
                "SELECT spec_key, engine, task, accuracy, extra, created FROM results WHERE zoo_hash=?", con,
                params=(zoo_hash,))
        finally:
            con.close()
        current = {k: engine_version_of_key(k) for k in df["spec_key"].unique()}
        df = df[df["engine"] == df["spec_key"].map(current)].reset_index(drop=True)
        if df.empty:
            return df
        extra = pd.DataFrame([json.loads(x) for x in df.pop("extra")])
        return pd.concat([df.reset_index(drop=True), extra], axis=1)

    def count(self, zoo_hash: Optional[str] = None) -> int:
        con = self._connect()
        try:
            if zoo_hash is None:
                return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            return con.execute("SELECT COUNT(*) FROM results WHERE zoo_hash=?", (zoo_hash,)).fetchone()[0]
        finally:
            con.close()
