"""The results store: SQLite (standard library), one row per (zoo content hash, spec, engine version, task).

Survives restarts; lives in ``$PERU_HOME`` (default ``~/.peru_studio``). Only exact rows (every image of the
held-out test sets) live in ``results``: quick estimates (:mod:`peru_core.estimate`) live in their own table,
``estimates``, which :meth:`ResultsStore.get` and :meth:`ResultsStore.frame` never read, so a table of the paper
(https://arxiv.org/abs/2310.01886, Table 1) or a CSV can never hold one. A row's precision is part of its key: a
float32 row keeps the plain engine version, a bf16 row gets ``+bf16`` appended, so one is never served as the
other. Rows of one computation are written in one transaction, so a process killed mid-sweep leaves either all rows of a spec or none; SQLite's journal
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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

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
CREATE TABLE IF NOT EXISTS estimates (
    zoo_hash TEXT NOT NULL,
    spec_key TEXT NOT NULL,
    engine TEXT NOT NULL,         -- as in results (precision included)
    task TEXT NOT NULL,
    accuracy REAL NOT NULL,       -- class-weighted accuracy on the stratified subset
    low REAL NOT NULL,            -- 95% Wilson interval
    high REAL NOT NULL,
    n INTEGER NOT NULL,           -- images evaluated (the subset)
    total INTEGER NOT NULL,       -- images of the full test set
    created REAL NOT NULL,
    PRIMARY KEY (zoo_hash, spec_key, engine, task)
);
"""
DEFAULT_PRECISION = "float32"


def engine_key(spec_key: str, precision: str = DEFAULT_PRECISION) -> str:
    """The ``engine`` column of a row: the spec's engine version, with ``+<precision>`` unless float32 (so every
    float32 row stored before precisions existed keeps its key)."""
    version = engine_version_of_key(spec_key)
    return version if precision == DEFAULT_PRECISION else f"{version}+{precision}"


def _precision_of(engine: str) -> str:
    return engine.rpartition("+")[2] if "+" in engine else DEFAULT_PRECISION


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
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute("COMMIT")
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        # A fresh connection per call: safe across Streamlit threads; busy timeout serialises writers.
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout=60000")
        return con

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), rolled back on any error or interrupt, so a
        cancelled compute never leaves half a spec's rows."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def get(self, zoo_hash: str, spec_key: str, tasks: Iterable[str], engine: Optional[str] = None, *,
            precision: str = DEFAULT_PRECISION) -> Optional[list[dict]]:
        """All exact rows for the spec on these tasks computed by ``engine`` (default: the current engine version of
        the spec at ``precision``), or None when any task is missing (then recompute). Never an estimate."""
        tasks = list(tasks)
        engine = engine if engine is not None else engine_key(spec_key, precision)
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

    def put(self, zoo_hash: str, spec_key: str, rows: list[dict], engine: Optional[str] = None, *,
            precision: str = DEFAULT_PRECISION) -> None:
        """Write all exact rows of one spec atomically (one transaction), keyed by ``engine`` (default: the current
        engine version of the spec at ``precision``); rows of older versions of the same spec and precision are
        dropped, and so are the spec's estimates at that precision (the exact numbers replace them)."""
        engine = engine if engine is not None else engine_key(spec_key, precision)
        now = time.time()
        with self._transaction() as con:
            stale = [e for (e,) in con.execute("SELECT DISTINCT engine FROM results WHERE zoo_hash=? AND spec_key=?",
                                               (zoo_hash, spec_key)) if e != engine
                     and _precision_of(e) == _precision_of(engine)]
            con.executemany("DELETE FROM results WHERE zoo_hash=? AND spec_key=? AND engine=?",
                            [(zoo_hash, spec_key, e) for e in stale])
            con.execute("DELETE FROM estimates WHERE zoo_hash=? AND spec_key=?", (zoo_hash, spec_key))
            con.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(zoo_hash, spec_key, engine, r["task"], float(r["accuracy"]),
                  json.dumps({k: v for k, v in r.items() if k not in ("task", "accuracy")}), now) for r in rows])

    def put_estimates(self, zoo_hash: str, spec_key: str, rows: list[dict], *,
                      precision: str = DEFAULT_PRECISION) -> None:
        """Write a spec's quick estimates (rows with task, accuracy, low, high, n, total) into the estimates table
        (one transaction). Skipped when the spec's exact rows are already stored: an estimate never shadows them."""
        engine = engine_key(spec_key, precision)
        now = time.time()
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM results WHERE zoo_hash=? AND spec_key=? AND engine=? LIMIT 1",
                           (zoo_hash, spec_key, engine)).fetchone():
                return  # the exact rows are there: nothing to estimate
            con.execute("DELETE FROM estimates WHERE zoo_hash=? AND spec_key=? AND engine<>?",
                        (zoo_hash, spec_key, engine))
            con.executemany(
                "INSERT OR REPLACE INTO estimates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(zoo_hash, spec_key, engine, r["task"], float(r["accuracy"]), float(r["low"]), float(r["high"]),
                  int(r["n"]), int(r["total"]), now) for r in rows])

    def estimates(self, zoo_hash: str, spec_key: str, tasks: Iterable[str], *,
                  precision: str = DEFAULT_PRECISION) -> Optional[list[dict]]:
        """The spec's quick estimates on these tasks (dicts with task, accuracy, low, high, n, total; each marked
        ``estimate: True``), or None when any task has none."""
        tasks = list(tasks)
        con = self._connect()
        try:
            cur = con.execute("SELECT task, accuracy, low, high, n, total FROM estimates WHERE zoo_hash=? AND "
                              "spec_key=? AND engine=?", (zoo_hash, spec_key, engine_key(spec_key, precision)))
            found = {r[0]: dict(zip(("task", "accuracy", "low", "high", "n", "total"), r)) for r in cur.fetchall()}
        finally:
            con.close()
        if any(t not in found for t in tasks):
            return None
        return [{**found[t], "estimate": True} for t in tasks]

    def frame(self, zoo_hash: str) -> pd.DataFrame:
        """Every stored exact float32 row of a zoo computed by the current engine, as a tidy frame (one row per spec
        and task); estimates and bf16 rows are never part of it."""
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
