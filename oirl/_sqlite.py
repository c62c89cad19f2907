"""Named schema migrations for oirl's SQLite files (the decision store, the embedding cache).

Each file records the migrations applied to it in a table of its own (``name``,
``applied_at``), as simonw/llm does; :func:`migrate` applies the missing ones, each
once, in order, inside one ``BEGIN IMMEDIATE`` transaction, so that several processes
opening a new file at once see one of them migrate it and the others find it done.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Migration", "applied_migrations", "is_migrated", "migrate"]


@dataclass(frozen=True)
class Migration:
    """One schema step: ``apply(connection)`` runs inside the migration transaction."""

    name: str
    apply: Callable[[sqlite3.Connection], None]

    @classmethod
    def of_statements(cls, name: str, statements: Sequence[str]) -> Migration:
        """A migration that executes ``statements`` in order."""

        def apply(connection: sqlite3.Connection) -> None:
            for statement in statements:
                connection.execute(statement)

        return cls(name, apply)


def applied_migrations(connection: sqlite3.Connection, table: str) -> set[str] | None:
    """The names recorded in ``table`` (None: the file has no such table yet)."""
    exists = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if not exists:
        return None
    return {name for (name,) in connection.execute(f"SELECT name FROM {table}")}  # noqa: S608 - our own table name


def is_migrated(connection: sqlite3.Connection, table: str, migrations: Sequence[Migration]) -> bool:
    """Whether every one of ``migrations`` is recorded (read-only)."""
    applied = applied_migrations(connection, table)
    return applied is not None and {m.name for m in migrations} <= applied


def migrate(connection: sqlite3.Connection, table: str, migrations: Sequence[Migration], *, now: Callable[[], str],
            on_unknown: Callable[[list[str]], None] | None = None) -> None:
    """Apply the missing ``migrations`` in order, recording each in ``table`` with ``now()``.

    ``connection`` must be in autocommit mode (``isolation_level=None``). ``on_unknown``,
    if given, is called with the sorted names the file records but this code does not
    know (a file written by a newer version) and is expected to raise; it is asked both
    when the file is up to date and, again, under the write lock.
    """
    known = [m.name for m in migrations]
    applied = applied_migrations(connection, table)
    if applied is not None and set(known) <= applied:
        _check_unknown(applied, known, on_unknown)
        return
    connection.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find it done
    try:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY NOT NULL, applied_at TEXT NOT NULL)")
        applied = applied_migrations(connection, table) or set()
        _check_unknown(applied, known, on_unknown)
        for migration in migrations:
            if migration.name not in applied:
                migration.apply(connection)
                connection.execute(f"INSERT INTO {table} (name, applied_at) VALUES (?, ?)", (migration.name, now()))  # noqa: S608
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise


def _check_unknown(applied: set[str], known: list[str], on_unknown: Callable[[list[str]], None] | None) -> None:
    unknown = sorted(applied - set(known))
    if unknown and on_unknown is not None:
        on_unknown(unknown)
