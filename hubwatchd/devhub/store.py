"""Result tables in SQLite: each replace or append is one transaction.

Columns are created from the rows themselves (no declared type, so a value
keeps the type its format gave it). A replace drops the table and builds it
again from the upload, so its columns are the upload's; an append adds the
columns it brings (or refuses them, when the policy is "reject"). Anything
raised while rows are read rolls the whole request back: the table is left
exactly as it was.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hubwatchd.devhub.formats import BadRows, Row

BATCH = 2000


class ColumnsRefused(BadRows):
    """An append brought columns the table lacks, and the policy is reject."""


def quote(name: str) -> str:
    """An SQLite identifier for any table or column name (hyphens included)."""
    return '"' + name.replace('"', '""') + '"'


class Store:
    """The result tables of one devhub, in one SQLite file.

    Methods are called from worker threads; each opens its own connection,
    and writes are serialised by one lock so a long upload cannot make
    another one fail with "database is locked".
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA synchronous=OFF")
        return db

    def write(
        self, table: str, mode: str, rows: Iterable[Row], *, new_columns: str
    ) -> int:
        """Replace or append `rows` into `table` in one transaction; the count."""
        with self._write_lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                columns = _columns(db, table)
                if mode == "replace" or columns is None:
                    db.execute(f"DROP TABLE IF EXISTS {quote(table)}")
                    db.execute(f"CREATE TABLE {quote(table)} (_devhub_row INTEGER)")
                    columns, new_columns = [], "union"
                count = _insert(db, table, columns, rows, new_columns)
                db.execute("COMMIT")
                return count
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                db.close()

    def clear(self) -> None:
        """Drop every table: back to a devhub that was never written."""
        with self._write_lock:
            db = self._connect()
            try:
                tables = db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                ).fetchall()
                for (name,) in tables:
                    db.execute(f"DROP TABLE {quote(name)}")
            finally:
                db.close()

    def count(self, table: str) -> int | None:
        """Rows in `table`, or None when it was never written."""
        db = self._connect()
        try:
            if _columns(db, table) is None:
                return None
            return db.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]
        finally:
            db.close()

    def rows(self, table: str, *, limit: int | None = None, offset: int = 0) -> Any:
        """(columns, rows as dicts in upload order), or None when never written."""
        db = self._connect()
        try:
            columns = _columns(db, table)
            if columns is None:
                return None
            if not columns:
                return [], []
            names = ", ".join(quote(c) for c in columns)
            sql = f"SELECT {names} FROM {quote(table)} ORDER BY rowid"
            sql += " LIMIT ? OFFSET ?"
            cursor = db.execute(sql, (-1 if limit is None else limit, offset))
            return columns, [dict(zip(columns, r, strict=True)) for r in cursor]
        finally:
            db.close()


def _columns(db: sqlite3.Connection, table: str) -> list[str] | None:
    info = db.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()
    if not info:
        return None
    return [name for (name,) in info if name != "_devhub_row"]


def _insert(
    db: sqlite3.Connection,
    table: str,
    columns: list[str],
    rows: Iterable[Row],
    new_columns: str,
) -> int:
    known = set(columns)
    statements: dict[tuple[str, ...], str] = {}
    batch: list[tuple[Any, ...]] = []
    batch_names: tuple[str, ...] | None = None
    count = 0
    for row in rows:
        names = tuple(row)
        if names != batch_names:
            _flush(db, statements.get(batch_names), batch)
            batch_names = names
            if names not in statements:
                _add_columns(db, table, names, known, new_columns, count + 1)
                statements[names] = _insert_sql(table, names)
        batch.append(tuple(row.values()))
        count += 1
        if len(batch) >= BATCH:
            _flush(db, statements[names], batch)
    _flush(db, statements.get(batch_names), batch)
    return count


def _add_columns(
    db: sqlite3.Connection,
    table: str,
    names: tuple[str, ...],
    known: set[str],
    policy: str,
    row_number: int,
) -> None:
    added = [name for name in names if name not in known]
    if added and policy == "reject":
        message = (
            f"row {row_number}: columns {', '.join(map(repr, added))} are not in "
            f"table {table!r}, and this devhub refuses new columns on append"
        )
        raise ColumnsRefused(message)
    for name in added:
        db.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)}")
        known.add(name)


def _insert_sql(table: str, names: tuple[str, ...]) -> str:
    if not names:
        return f"INSERT INTO {quote(table)} DEFAULT VALUES"
    columns = ", ".join(quote(n) for n in names)
    marks = ", ".join("?" * len(names))
    return f"INSERT INTO {quote(table)} ({columns}) VALUES ({marks})"


def _flush(
    db: sqlite3.Connection, sql: str | None, batch: list[tuple[Any, ...]]
) -> None:
    if batch and sql is not None:
        db.executemany(sql, batch)
    batch.clear()
